"""`linear` on the H100 (`gpu`): the TMA GEMM vs F.linear in fp32 (allclose) on Qwen3 layer shapes and the
151,936-row LM head, both schedules (split pieces for small M, whole-K programs for large M), bias, fp16,
odd M, misaligned and non-contiguous inputs, and the fallback pointer GEMM for a transposed weight."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from onpolicy.kernels import linear

mm = importlib.import_module("onpolicy.kernels.matmul")
SHAPES = [(1024, 3072), (2048, 6144), (4096, 12288), (3072, 1024), (6144, 2048), (12288, 4096),
          (1024, 4096), (2048, 1024), (4096, 4096), (1024, 151936), (4096, 151936)]
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _weight(N, K, dtype, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(N, K, device="cuda", generator=g) / K**0.5).to(dtype)


def _check_close(out, x, w, b=None):
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    tol = TOL[out.dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("M", [1, 7, 64, 255, 1000, 4096])
def test_linear_gpu_matches_fp32_reference(K, N, M):
    if N > 100000 and M > 1000:
        pytest.skip("LM head at M=4096: covered by the invariance test")
    w = _weight(N, K, torch.bfloat16)
    x = torch.randn(M, K, device="cuda").bfloat16()
    _check_close(linear(x, w), x, w)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K,N", [(3072, 1024), (1024, 3072), (4096, 12288)])
@pytest.mark.parametrize("M", [3, 2000])
def test_linear_gpu_bias_and_fp16(dtype, K, N, M):
    w = _weight(N, K, dtype)
    b = torch.randn(N, device="cuda").to(dtype)
    x = torch.randn(M, K, device="cuda").to(dtype)
    _check_close(linear(x, w, b), x, w, b)


@pytest.mark.gpu
def test_linear_gpu_split_schedule_used_and_equal_to_whole_k():
    K, N = 12288, 4096
    cfg = mm.tile_config(torch.bfloat16, K, N)
    assert -(-K // cfg["PIECE_K"]) > 1  # this shape has K pieces ...
    w = _weight(N, K, torch.bfloat16)
    x = torch.randn(4096, K, device="cuda").bfloat16()
    sms = mm._num_sms(x.device)
    assert 4 * -(-N // cfg["BLOCK_N"]) <= sms  # ... so one row runs the split schedule, 4096 rows whole-K
    full = linear(x, w)
    for i in (0, 1, 4095):
        assert torch.equal(linear(x[i:i + 1], w), full[i:i + 1])


@pytest.mark.gpu
def test_linear_gpu_misaligned_and_strided_inputs():
    K, N = 2048, 1024
    w = _weight(N, K, torch.bfloat16)
    flat = torch.randn(1 + 33 * K, device="cuda").bfloat16()
    x_mis = flat[1:].view(33, K)  # 2-byte storage offset: the launcher copies it to an aligned buffer
    x_col = torch.randn(K, 33, device="cuda").bfloat16().t()  # non-contiguous rows
    for x in (x_mis, x_col):
        assert torch.equal(linear(x, w), linear(x.contiguous().clone(), w))


@pytest.mark.gpu
def test_linear_gpu_transposed_weight_takes_pointer_gemm():
    K, N = 1024, 3072
    wt = _weight(K, N, torch.bfloat16).t()  # [N, K] view with column-major storage: no TMA
    assert not mm._tma_ok(torch.empty(1, K, device="cuda", dtype=torch.bfloat16), wt)
    x = torch.randn(300, K, device="cuda").bfloat16()
    out = linear(x, wt)
    _check_close(out, x, wt)
    assert torch.equal(linear(x[5:6], wt), out[5:6])
