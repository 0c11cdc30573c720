"""rms_norm vs the HF Qwen3RMSNorm reference (forward, backward), the Triton kernel under the interpreter."""
import pytest
import torch

from onpolicy.kernels.rmsnorm import _rms_norm_triton, rms_norm, rms_norm_reference

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]


def hf_qwen3_rmsnorm(x, weight, eps):
    """Transcription of transformers' Qwen3RMSNorm.forward."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(5, 64), (3, 4, 128), (40, 1000)])
def test_rms_norm_forward_backward_vs_reference(dtype, atol, rtol, shape):
    H = shape[-1]
    x = torch.randn(*shape, dtype=dtype) * 3
    w = (1 + 0.1 * torch.randn(H)).to(dtype)
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = rms_norm(xi, wi, 1e-6)
    ref = hf_qwen3_rmsnorm(xr, wr, 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(rms_norm_reference(x, w, 1e-6), ref)
    g = torch.randn(shape, dtype=dtype)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xi.grad.float(), xr.grad.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(wi.grad.float(), wr.grad.float(), atol=atol * 10, rtol=rtol)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("H", [48, 64, 128])
def test_triton_rms_norm_interpreter(dtype, atol, rtol, H):
    x = torch.randn(6, H, dtype=dtype)
    w = torch.randn(H, dtype=dtype)
    out = _rms_norm_triton(x, w, 1e-5)
    torch.testing.assert_close(out.float(), rms_norm_reference(x, w, 1e-5).float(), atol=atol * 4, rtol=rtol)
    assert torch.equal(_rms_norm_triton(x[3:4], w, 1e-5)[0], out[3])


def test_rms_norm_backward_run_to_run_deterministic():
    x = torch.randn(70, 256, requires_grad=True)
    w = torch.randn(256, requires_grad=True)
    g = torch.randn(70, 256)
    first = torch.autograd.grad(rms_norm(x, w, 1e-6), (x, w), g)
    second = torch.autograd.grad(rms_norm(x, w, 1e-6), (x, w), g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
