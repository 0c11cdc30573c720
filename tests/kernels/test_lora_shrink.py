"""kernels.lora_shrink (x @ a.T for a thin a): vs the torch reference, forward and backward (fp32, bf16); a row
alone == inside batches (torch.equal); the Hopper TMA GEMM with the shrink tile config under the Triton
interpreter (fp16: split-K pieces at one row == whole-K programs at many rows); the same on CUDA (gpu)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from onpolicy import kernels

lora = importlib.import_module("onpolicy.kernels.lora")
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_shrink_matches_reference_forward_and_backward(dtype, tol):
    x = torch.randn(37, 96).to(dtype).requires_grad_(True)
    a = (torch.randn(24, 96) / 96**0.5).to(dtype).requires_grad_(True)
    out = kernels.lora_shrink(x, a)
    w = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * w).sum().backward()
    xr, ar = x.detach().float().requires_grad_(True), a.detach().float().requires_grad_(True)
    ref = F.linear(xr, ar)
    (ref * w).sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(a.grad.float(), ar.grad, atol=5 * tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shrink_batch_invariant_cpu(dtype):
    x, a = torch.randn(130, 160).to(dtype), torch.randn(40, 160).to(dtype)
    rows = {i: kernels.lora_shrink(x[i:i + 1], a) for i in (0, 64, 129)}
    for m in (1, 65, 130):
        out = kernels.lora_shrink(x[:m], a)
        assert all(torch.equal(out[i:i + 1], r) for i, r in rows.items() if i < m)


def test_shrink_checks_and_reference_mode():
    with pytest.raises(ValueError, match="kernels.lora_shrink: x .* and a .* must share K"):
        kernels.lora_shrink(torch.randn(3, 8), torch.randn(2, 9))
    x, a = torch.randn(5, 8), torch.randn(2, 8)
    with kernels.invariant_mode(False):
        assert torch.equal(kernels.lora_shrink(x, a), F.linear(x, a))


def test_shrink_config_depends_on_k_and_r_only():
    assert lora.shrink_config(4096, 96)["BLOCK_N"] == 128 and lora.shrink_config(4096, 32)["BLOCK_N"] == 32
    assert lora.shrink_config(4096, 96)["PIECE_K"] == 256 and lora.shrink_config(128, 8)["PIECE_K"] == 128
    assert lora.shrink_config(12288, 1000)["BLOCK_N"] == 256


@pytest.mark.parametrize("K,R", [(512, 24), (320, 48)])
def test_shrink_tma_interpreter_split_equals_whole_k(K, R):
    """fp16 (bf16 dots are garbage under the interpreter): 1 row runs one program per K piece plus the ordered
    piece sum (4 'SMs' on CPU), 300 rows run whole-K programs; every row comes out bitwise equal."""
    cfg = lora.shrink_config(K, R)
    x, a = torch.randn(300, K).half(), (torch.randn(R, K) / K**0.5).half()
    full = lora._linear_tma(x, a, None, cfg)
    torch.testing.assert_close(full.float(), x.float() @ a.float().t(), atol=2e-3, rtol=2e-3)
    for i in (0, 129, 299):
        assert torch.equal(lora._linear_tma(x[i:i + 1], a, None, cfg), full[i:i + 1])


@pytest.mark.gpu
@pytest.mark.parametrize("K,R", [(4096, 96), (4096, 64), (12288, 32), (4096, 8)])
def test_shrink_cuda_bf16_invariant_and_close(K, R):
    """Qwen3-8B's adapter shapes (r = 32 stacked x3 / x2 / x1; r = 8) on the H100: the TMA path is taken, rows
    alone equal rows in batches of 7 to 4096 (split and whole-K schedules), and the values match fp32."""
    torch.manual_seed(0)
    x = torch.randn(4096, K, device="cuda").bfloat16()
    a = (torch.randn(R, K, device="cuda") / K**0.5).bfloat16()
    assert lora._tma_ok(x, a)
    full = kernels.lora_shrink(x, a)
    torch.testing.assert_close(full.float(), x.float() @ a.float().t(), atol=2e-2, rtol=2e-2)
    for m in (1, 7, 128, 1000, 4096):
        out = kernels.lora_shrink(x[:m], a)
        for i in (0, m // 2, m - 1):
            assert torch.equal(out[i:i + 1], full[i:i + 1]), (m, i)
