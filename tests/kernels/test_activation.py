"""silu_mul vs torch's silu reference (forward, backward), the Triton kernel under the interpreter."""
import pytest
import torch
import torch.nn.functional as F

from onpolicy.kernels.activation import _silu_mul_triton, silu_mul, silu_mul_reference

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 64), (300,)])
def test_silu_mul_forward_backward_vs_reference(dtype, atol, rtol, shape):
    g = torch.randn(*shape, dtype=dtype) * 4
    u = torch.randn(*shape, dtype=dtype)
    gi, ui = g.clone().requires_grad_(), u.clone().requires_grad_()
    gr, ur = g.clone().requires_grad_(), u.clone().requires_grad_()
    out = silu_mul(gi, ui)
    ref = (F.silu(gr.float()) * ur.float()).to(dtype)
    assert out.dtype == dtype and out.shape == g.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    dy = torch.randn(shape, dtype=dtype)
    out.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(gi.grad.float(), gr.grad.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ui.grad.float(), ur.grad.float(), atol=atol, rtol=rtol)


def test_silu_mul_strided_views_of_fused_projection():
    gate_up = torch.randn(9, 64)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate, up), silu_mul_reference(gate, up), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_triton_silu_mul_interpreter(dtype, atol, rtol):
    gate_up = (torch.randn(5, 2 * 1100) * 4).to(dtype)
    gate, up = gate_up[:, :1100], gate_up[:, 1100:]  # strided rows, N spans two column blocks
    out = _silu_mul_triton(gate, up)
    torch.testing.assert_close(out.float(), silu_mul_reference(gate, up).float(), atol=atol, rtol=rtol)
    assert torch.equal(_silu_mul_triton(gate[4:5], up[4:5])[0], out[4])
