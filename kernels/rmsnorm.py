"""Batch-invariant RMSNorm: `rms_norm(x[..., H], weight[H], eps)`, math exactly as HF Qwen3RMSNorm.

    y = (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype) * weight

GPU: one Triton program per row holding the full row (BLOCK = next_pow2(H)), so the sum of squares is one
in-register reduction whose order depends on H only. CPU: the torch math on fixed-shape [CPU_ROW_TILE, H]
zero-padded row tiles (torch's reduction strategy depends on the tensor's size; a fixed tile fixes it).
Backward: autograd of the torch reference recomputed in fp32 (deterministic, not batch invariant).
Left out: fused residual add, H > 65536 (a row must fit one program), weight offset (Gemma's 1 + w).
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import (check, check_same_device, check_tensor, cpu_row_tiled, is_invariant, require_triton, tl,
                             triton, use_triton)

MAX_HIDDEN = 65536


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, H, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        """One program = one row: fp32 sum of squares over the full row, rsqrt, round to x dtype, times w."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=0) / H
        rstd = 1.0 / tl.sqrt_rn(var + eps)
        normed = (x * rstd).to(y_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, (normed * w).to(y_ptr.dtype.element_ty), mask=mask)


def _rms_norm_triton(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Launch one program per row of x2d[M, H] (last dim contiguous)."""
    require_triton("rms_norm")
    M, H = x2d.shape
    y = torch.empty((M, H), device=x2d.device, dtype=x2d.dtype)
    if M == 0:
        return y
    block = triton.next_power_of_2(H)
    num_warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    _rms_norm_kernel[(M,)](x2d, weight, y, H, x2d.stride(0), y.stride(0), float(eps), BLOCK=block,
                           num_warps=num_warps)
    return y


def _rms_norm_torch(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x2d.float()
    var = xf.pow(2).sum(-1, keepdim=True) / x2d.shape[-1]
    return (xf * torch.rsqrt(var + eps)).to(x2d.dtype) * weight


def _rms_norm_cpu(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return cpu_row_tiled(lambda block: _rms_norm_torch(block, weight, eps), x2d)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Qwen3RMSNorm in plain torch."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, eps):
        ctx.save_for_backward(x2d, weight)
        ctx.eps = eps
        if use_triton(x2d, weight):
            return _rms_norm_triton(x2d, weight, eps)
        return _rms_norm_cpu(x2d, weight, eps)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight = ctx.saved_tensors
        with torch.enable_grad():
            xg = x2d.detach().requires_grad_(ctx.needs_input_grad[0])
            wg = weight.detach().requires_grad_(ctx.needs_input_grad[1])
            y = rms_norm_reference(xg, wg, ctx.eps)
            inputs = [t for t in (xg, wg) if t.requires_grad]
            grads = list(torch.autograd.grad(y, inputs, grad_y)) if inputs else []
        grad_x = grads.pop(0) if ctx.needs_input_grad[0] else None
        grad_w = grads.pop(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of x[..., H] with weight[H] -> x.dtype; batch invariant; autograd."""
    check_tensor("rms_norm", "x", x)
    check_tensor("rms_norm", "weight", weight)
    check(x.dim() >= 1 and weight.dim() == 1 and x.shape[-1] == weight.shape[0], "rms_norm",
          f"x must be [..., H] and weight [H]; got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    check(0 < x.shape[-1] <= MAX_HIDDEN, "rms_norm", f"H={x.shape[-1]} must be in 1..{MAX_HIDDEN}")
    check(weight.dtype == x.dtype, "rms_norm", f"weight ({weight.dtype}) must have x's dtype ({x.dtype})")
    check(isinstance(eps, (int, float)) and eps > 0, "rms_norm", f"eps must be a positive float, got {eps!r}")
    check_same_device("rms_norm", x=x, weight=weight)
    if not is_invariant():
        return rms_norm_reference(x, weight, eps)
    out = _RMSNorm.apply(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous(), float(eps))
    return out.reshape(x.shape)
