"""GLU activations in fp32, rounded once to gate's dtype: `silu_mul(gate, up)` = silu(gate) * up (SwiGLU) and
`gelu_tanh_mul(gate, up)` = gelu_tanh(gate) * up (GeGLU, Gemma's `gelu_pytorch_tanh`).

Both paths use the formula g / (1 + exp(-z)) * u, z = g for SiLU and z = 2 sqrt(2/pi) (g + 0.044715 g^3) for
GELU-tanh (0.5 (1 + tanh(z/2)) = sigmoid(z)): torch's own CPU sigmoid/silu/tanh take different code paths for
vectorised and scalar-tail elements (a value's result would depend on its position in the tensor); exp and
IEEE divide do not. Elementwise, so batch invariant by construction. GPU: a Triton kernel over
[rows, BLOCK] tiles of 2-D views (gate/up may be strided row views of a fused gate_up projection).
Backward: plain fp32 torch (deterministic). Left out: other GLU variants (exact-erf GELU, clamped SwiGLU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import (check, check_same_device, check_tensor, require_triton, tl, triton,
                                      use_triton)

BLOCK_N = 1024
GELU_C = 1.5957691216057308  # 2 * sqrt(2 / pi)
GELU_A = 0.044715


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, stride_g, stride_u, stride_y, BLOCK: tl.constexpr,
                         GELU: tl.constexpr = False):
        """Program (row, column block): y = g / (1 + exp(-z)) * u in fp32, one rounding (z = g: SiLU;
        GELU: z = GELU_C (g + GELU_A g^3))."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            y = g / (1.0 + tl.exp(-(1.5957691216057308 * (g + 0.044715 * (g * g * g))))) * u
        else:
            y = g / (1.0 + tl.exp(-g)) * u
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _silu_mul_triton(gate2d: torch.Tensor, up2d: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """Launch on 2-D [M, N] views whose last dim is contiguous; output contiguous in gate's dtype."""
    require_triton("silu_mul")
    M, N = gate2d.shape
    y = torch.empty((M, N), device=gate2d.device, dtype=gate2d.dtype)
    if M == 0 or N == 0:
        return y
    _silu_mul_kernel[(M, triton.cdiv(N, BLOCK_N))](gate2d, up2d, y, N, gate2d.stride(0), up2d.stride(0),
                                                   y.stride(0), BLOCK=BLOCK_N, GELU=gelu, num_warps=4)
    return y


def _silu_mul_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.float()
    return (g / (1.0 + torch.exp(-g)) * up.float()).to(gate.dtype)


def _gelu_z(g: torch.Tensor) -> torch.Tensor:
    return GELU_C * (g + GELU_A * (g * g * g))


def _gelu_tanh_mul_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.float()
    return (g / (1.0 + torch.exp(-_gelu_z(g))) * up.float()).to(gate.dtype)


def gelu_tanh_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """torch's F.gelu(approximate="tanh") in fp32 times up, cast to gate.dtype."""
    return (F.gelu(gate.float(), approximate="tanh") * up.float()).to(gate.dtype)


def silu_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """torch's F.silu in fp32 times up, cast to gate.dtype."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """2-D [rows, N] view with a contiguous last dim (copies only when no such view exists)."""
    t2 = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] <= 1 else t2.contiguous()


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        if use_triton(gate, up):
            return _silu_mul_triton(_as_rows(gate), _as_rows(up)).reshape(gate.shape)
        return _silu_mul_torch(gate, up)

    @staticmethod
    def backward(ctx, grad_y):
        gate, up = ctx.saved_tensors
        g, u, gy = gate.float(), up.float(), grad_y.float()
        sig = 1.0 / (1.0 + torch.exp(-g))
        grad_g = gy * u * sig * (1.0 + g * (1.0 - sig)) if ctx.needs_input_grad[0] else None
        grad_u = gy * g * sig if ctx.needs_input_grad[1] else None
        return (None if grad_g is None else grad_g.to(gate.dtype),
                None if grad_u is None else grad_u.to(up.dtype))


class _GeluTanhMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        if use_triton(gate, up):
            return _silu_mul_triton(_as_rows(gate), _as_rows(up), gelu=True).reshape(gate.shape)
        return _gelu_tanh_mul_torch(gate, up)

    @staticmethod
    def backward(ctx, grad_y):
        gate, up = ctx.saved_tensors
        g, u, gy = gate.float(), up.float(), grad_y.float()
        sig = 1.0 / (1.0 + torch.exp(-_gelu_z(g)))
        dz = GELU_C * (1.0 + 3.0 * GELU_A * g * g)
        grad_g = gy * u * (sig + g * sig * (1.0 - sig) * dz) if ctx.needs_input_grad[0] else None
        grad_u = gy * g * sig if ctx.needs_input_grad[1] else None
        return (None if grad_g is None else grad_g.to(gate.dtype),
                None if grad_u is None else grad_u.to(up.dtype))


def _check_glu(op: str, gate: torch.Tensor, up: torch.Tensor) -> None:
    check_tensor(op, "gate", gate)
    check_tensor(op, "up", up)
    check(gate.shape == up.shape, op, f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    check(gate.dim() >= 1, op, "gate and up must have at least 1 dim")
    check_same_device(op, gate=gate, up=up)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate, up [..., N] of one shape -> gate.dtype; batch invariant; autograd."""
    _check_glu("silu_mul", gate, up)
    return _SiluMul.apply(gate, up)


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up for gate, up [..., N] of one shape -> gate.dtype; batch invariant; autograd."""
    _check_glu("gelu_tanh_mul", gate, up)
    return _GeluTanhMul.apply(gate, up)
