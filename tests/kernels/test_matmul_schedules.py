"""The TMA GEMM's forced schedules under the Triton interpreter (fp16, tiny tiles; CPU tensors report 4 SMs):
`split=True` on a batch whose automatic choice is whole-K (and `split=False` on one that would split) gives the
same bits, on an input whose fp32 sum depends on the piece size; the narrow-output configs' K pieces."""
import importlib

import pytest
import torch

mm = importlib.import_module("onpolicy.kernels.matmul")
gemm = importlib.import_module("onpolicy.kernels._gemm_tma")
TINY = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=2, PIECE_K=32)


def _order_sensitive(n_rows):
    """Row 0 of w sums to 0 walking K whole in 16-column blocks, to 2**-8 in 32-column pieces (see
    test_matmul_tma._order_sensitive_row); other rows random."""
    w = torch.randn(16, 96) / 10
    w[0] = 0
    w[0, 0], w[0, 32], w[0, 48], w[0, 64] = 2.0**15, 3 * 2.0**-11, 3 * 2.0**-11, -(2.0**15)
    x = torch.randn(n_rows, 96)
    x[:, [0, 32, 48, 64]] = 1
    return x.half(), w.half()


@pytest.mark.parametrize("rows", [1, 70])
def test_forced_schedules_give_the_same_bits(rows):
    x, w = _order_sensitive(rows)
    auto_split = gemm._use_split(-(-rows // 16), 3, mm._num_sms(x.device))
    assert auto_split == (rows == 1)  # so each forced run below takes the schedule auto would not
    split = mm._linear_tma(x, w, None, TINY, split=True)
    whole = mm._linear_tma(x, w, None, TINY, split=False)
    assert torch.equal(split, whole)
    assert torch.all(split[:, 0] == 2.0**-8)  # the piece order, not one K walk, in both schedules


def test_split_forced_with_one_piece_runs_whole_k():
    x, w = _order_sensitive(3)
    one_piece = dict(TINY, PIECE_K=96)
    assert torch.equal(mm._linear_tma(x, w, None, one_piece, split=True),
                       mm._linear_tma(x, w, None, one_piece, split=False))


@pytest.mark.parametrize("K,N,piece", [(3072, 1024, 512), (2048, 1024, 512), (6144, 2048, 1024),
                                       (12288, 4096, 4096)])
def test_narrow_output_pieces(K, N, piece):
    for dtype in (torch.bfloat16, torch.float16):
        cfg = mm.tile_config(dtype, K, N)
        assert cfg["PIECE_K"] == piece and K % piece == 0 and piece % cfg["BLOCK_K"] == 0
