"""The Hopper TMA GEMM (`_linear_tma`) under the Triton interpreter (fp16, tiny tiles), and its tile configs.

On CPU tensors `_num_sms` reports 4 SMs, so a 1-tile product runs the split schedule (one program per K piece,
then the ordered piece sum) and a many-tile product runs whole-K programs: a row must come out bitwise equal
from both. (bf16 dots are garbage under the interpreter, so these run fp16; the GPU tests cover bf16.)
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

mm = importlib.import_module("onpolicy.kernels.matmul")

TINY = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=2)


def _tiles(M, N, cfg):
    return -(-M // cfg["BLOCK_M"]) * -(-N // cfg["BLOCK_N"])


@pytest.mark.parametrize("K,piece", [(64, 16), (96, 32), (40, 16), (64, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tma_gemm_interpreter_matches_reference(K, piece, with_bias):
    cfg = dict(TINY, PIECE_K=piece)
    x, w = torch.randn(37, K).half(), (torch.randn(24, K) / K**0.5).half()
    b = torch.randn(24).half() if with_bias else None
    out = mm._linear_tma(x, w, b, cfg)
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("K,piece", [(64, 16), (96, 32), (40, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tma_split_schedule_equals_whole_k_rows(K, piece, with_bias):
    cfg = dict(TINY, PIECE_K=piece)
    N = 16
    x, w = torch.randn(70, K).half(), (torch.randn(N, K) / K**0.5).half()
    b = torch.randn(N).half() if with_bias else None
    assert 4 * _tiles(1, N, cfg) <= mm._num_sms(x.device) < 4 * _tiles(70, N, cfg)  # split alone, whole-K in batch
    full = mm._linear_tma(x, w, b, cfg)
    for i in (0, 13, 69):
        assert torch.equal(mm._linear_tma(x[i:i + 1], w, b, cfg), full[i:i + 1])


def _order_sensitive_row(n_rows):
    """x = ones, w row 0 = [B, 0 x15 | 0 x16 | s, 0 x15 | s, 0 x15 | -B, 0 x15 | 0 x16] with B = 2**15 and
    s = 3 * 2**-11 (fp32 ulp at B is 2**-8). Walking K in 16-column blocks with one accumulator absorbs each
    s into B and gives exactly 0; 32-column pieces give s + s = 0.75 ulp first, so B + 2s rounds up and the
    result is 2**-8."""
    w = torch.zeros(16, 96)
    w[0, 0], w[0, 32], w[0, 48], w[0, 64] = 2.0**15, 3 * 2.0**-11, 3 * 2.0**-11, -(2.0**15)
    return torch.ones(n_rows, 96).half(), w.half()


def test_tma_pieces_set_the_sum_order_in_both_schedules():
    x, w = _order_sensitive_row(70)
    whole_k = mm._linear_tma(x, w, None, dict(TINY, PIECE_K=96))
    assert torch.all(whole_k[:, 0] == 0)
    pieces = mm._linear_tma(x, w, None, dict(TINY, PIECE_K=32))  # 70 rows: whole-K programs
    assert torch.all(pieces[:, 0] == 2.0**-8)
    alone = mm._linear_tma(x[:1], w, None, dict(TINY, PIECE_K=32))  # 1 tile: split schedule + piece sum
    assert alone[0, 0] == 2.0**-8 and torch.equal(alone, pieces[:1])


def test_tma_gemm_misaligned_x_is_copied():
    cfg = dict(TINY, PIECE_K=32)
    flat = torch.randn(1 + 5 * 64).half()
    x = flat[1:].view(5, 64)  # storage offset of 2 bytes: not 16-byte aligned
    w = torch.randn(16, 64).half()
    assert torch.equal(mm._linear_tma(x, w, None, cfg), mm._linear_tma(x.clone(), w, None, cfg))


def test_linear_k0_takes_the_pointer_gemm():
    x, w, b = torch.randn(3, 0).half(), torch.randn(5, 0).half(), torch.randn(5).half()
    assert not mm._tma_ok(x, w)  # TMA descriptors need a non-empty K
    assert torch.equal(mm._linear_triton(x, w), torch.zeros(3, 5).half())
    assert torch.equal(mm._linear_triton(x, w, b), b.expand(3, 5))


@pytest.mark.parametrize("K", [1024, 2048, 4096])
def test_lm_head_span_widths_share_one_config(K):
    # token_logprobs' GEMM spans are 4096 * j columns plus a 384-column tail of the 151936 vocab.
    widths = [384, 4096, 8192, 4096 * 37, 4096 * 20 + 384, 151936]
    configs = {tuple(sorted(mm.tile_config(torch.bfloat16, K, n).items())) for n in widths}
    assert len(configs) == 1


@pytest.mark.parametrize("K,N", [(1024, 3072), (2048, 6144), (4096, 12288), (3072, 1024), (6144, 2048),
                                 (12288, 4096), (1024, 151936), (40, 24)])
def test_tile_config_pieces_are_whole_k_tiles(K, N):
    for dtype in (torch.bfloat16, torch.float16):
        cfg = mm.tile_config(dtype, K, N)
        assert cfg["PIECE_K"] % cfg["BLOCK_K"] == 0 or cfg["PIECE_K"] == K
