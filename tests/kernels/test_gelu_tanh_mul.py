"""gelu_tanh_mul vs torch's gelu(approximate="tanh") reference (forward, backward), the Triton kernel under the
interpreter, and batch invariance (a row alone equals the row inside a larger tensor, CPU path)."""
import pytest
import torch
import torch.nn.functional as F

from onpolicy.kernels.activation import _silu_mul_triton, gelu_tanh_mul, gelu_tanh_mul_reference

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 64), (300,)])
def test_gelu_tanh_mul_forward_backward_vs_reference(dtype, atol, rtol, shape):
    g = torch.randn(*shape, dtype=dtype) * 4
    u = torch.randn(*shape, dtype=dtype)
    gi, ui = g.clone().requires_grad_(), u.clone().requires_grad_()
    gr, ur = g.clone().requires_grad_(), u.clone().requires_grad_()
    out = gelu_tanh_mul(gi, ui)
    ref = (F.gelu(gr.float(), approximate="tanh") * ur.float()).to(dtype)
    assert out.dtype == dtype and out.shape == g.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    dy = torch.randn(shape, dtype=dtype)
    out.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(gi.grad.float(), gr.grad.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ui.grad.float(), ur.grad.float(), atol=atol, rtol=rtol)


def test_gelu_tanh_mul_rows_batch_invariant():
    gate_up = torch.randn(37, 2 * 45).bfloat16() * 3
    gate, up = gate_up.chunk(2, dim=-1)
    full = gelu_tanh_mul(gate, up)
    for rows in (slice(0, 1), slice(5, 6), slice(3, 20), slice(36, 37)):
        assert torch.equal(gelu_tanh_mul(gate[rows], up[rows]), full[rows])


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_triton_gelu_tanh_mul_interpreter(dtype, atol, rtol):
    gate_up = (torch.randn(5, 2 * 1100) * 4).to(dtype)
    gate, up = gate_up[:, :1100], gate_up[:, 1100:]  # strided rows, N spans two column blocks
    out = _silu_mul_triton(gate, up, gelu=True)
    torch.testing.assert_close(out.float(), gelu_tanh_mul_reference(gate, up).float(), atol=atol, rtol=rtol)
    assert torch.equal(_silu_mul_triton(gate[4:5], up[4:5], gelu=True)[0], out[4])
