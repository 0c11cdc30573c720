"""The gated activations (silu_mul; gelu_tanh_mul, Gemma's gelu_pytorch_tanh) vs torch's functions (forward,
backward), the Triton kernel under the interpreter, and batch invariance (a row alone equals the row inside a
larger tensor, CPU path)."""
import pytest
import torch
import torch.nn.functional as F

from onpolicy.kernels.activation import (_silu_mul_triton, gelu_tanh_mul, gelu_tanh_mul_reference, silu_mul,
                                         silu_mul_reference)

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]
# name: (op, torch's activation, reference, the Triton kernel's `gelu` switch)
OPS = {
    "silu": (silu_mul, F.silu, silu_mul_reference, False),
    "gelu_tanh": (gelu_tanh_mul, lambda x: F.gelu(x, approximate="tanh"), gelu_tanh_mul_reference, True),
}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 64), (300,)])
def test_forward_backward_vs_torch(name, dtype, atol, rtol, shape):
    op, act = OPS[name][:2]
    g = torch.randn(*shape, dtype=dtype) * 4
    u = torch.randn(*shape, dtype=dtype)
    gi, ui = g.clone().requires_grad_(), u.clone().requires_grad_()
    gr, ur = g.clone().requires_grad_(), u.clone().requires_grad_()
    out = op(gi, ui)
    ref = (act(gr.float()) * ur.float()).to(dtype)
    assert out.dtype == dtype and out.shape == g.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    dy = torch.randn(shape, dtype=dtype)
    out.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(gi.grad.float(), gr.grad.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ui.grad.float(), ur.grad.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", OPS)
def test_strided_views_of_fused_projection(name):
    op, _, reference, _ = OPS[name]
    gate_up = torch.randn(9, 64)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(op(gate, up), reference(gate, up), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", OPS)
def test_rows_batch_invariant(name):
    op = OPS[name][0]
    gate_up = torch.randn(37, 2 * 45).bfloat16() * 3
    gate, up = gate_up.chunk(2, dim=-1)
    full = op(gate, up)
    for rows in (slice(0, 1), slice(5, 6), slice(3, 20), slice(36, 37)):
        assert torch.equal(op(gate[rows], up[rows]), full[rows])


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_triton_interpreter(name, dtype, atol, rtol):
    _, _, reference, gelu = OPS[name]
    gate_up = (torch.randn(5, 2 * 1100) * 4).to(dtype)
    gate, up = gate_up[:, :1100], gate_up[:, 1100:]  # strided rows, N spans two column blocks
    out = _silu_mul_triton(gate, up, gelu=gelu)
    torch.testing.assert_close(out.float(), reference(gate, up).float(), atol=atol, rtol=rtol)
    assert torch.equal(_silu_mul_triton(gate[4:5], up[4:5], gelu=gelu)[0], out[4])
