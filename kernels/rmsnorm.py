"""Batch-invariant RMSNorm: `rms_norm(x[..., H], weight[H], eps)`, math exactly as HF Qwen3RMSNorm.

    y = (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype) * weight

GPU: one Triton program per row holding the full row (BLOCK = next_pow2(H)), so the sum of squares is one
in-register reduction whose order depends on H only. CPU: the torch math on fixed-shape [CPU_ROW_TILE, H]
zero-padded row tiles (torch's reduction strategy depends on the tensor's size; a fixed tile fixes it).
Backward: autograd of the torch reference recomputed in fp32 (deterministic, not batch invariant).
`add_rms_norm` fuses the residual add in front (h = residual + x; y = rms_norm(h)).
Left out: H > 65536 (a row must fit one program), weight offset (Gemma's 1 + w).
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import (check, check_same_device, check_tensor, cpu_row_tiled, require_triton, tl,
                             triton, use_triton)

MAX_HIDDEN = 65536


if triton is not None:

    @triton.jit
    def rms_rstd(x, H, eps):
        """fp32 row x (zero padded past H) -> 1 / sqrt(mean(x^2) + eps): one in-register sum over the row."""
        var = tl.sum(x * x, axis=0) / H
        return 1.0 / tl.sqrt_rn(var + eps)

    @triton.jit
    def rms_scale(x, rstd, w, out_ty: tl.constexpr):
        """(x * rstd) rounded to out_ty, times w, rounded to out_ty; returned as fp32 (exact)."""
        normed = (x * rstd).to(out_ty).to(tl.float32)
        return (normed * w).to(out_ty).to(tl.float32)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, H, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        """One program = one row: fp32 sum of squares over the full row, rsqrt, round to x dtype, times w."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = rms_scale(x, rms_rstd(x, H, eps), w, y_ptr.dtype.element_ty)
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, H, stride_x, stride_r, stride_h, stride_y, eps,
                             BLOCK: tl.constexpr):
        """One program = one row: h = r + x rounded to the dtype (torch's add), stored; then `_rms_norm_kernel`."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        h = (r + x).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * stride_h + cols, h, mask=mask)
        hf = h.to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = rms_scale(hf, rms_rstd(hf, H, eps), w, y_ptr.dtype.element_ty)
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def rms_num_warps(block: int) -> int:
    """Warps of a one-row program: fixed per row width (the in-register reduction order depends on it)."""
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def _rms_norm_triton(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Launch one program per row of x2d[M, H] (last dim contiguous)."""
    require_triton("rms_norm")
    M, H = x2d.shape
    y = torch.empty((M, H), device=x2d.device, dtype=x2d.dtype)
    if M == 0:
        return y
    block = triton.next_power_of_2(H)
    _rms_norm_kernel[(M,)](x2d, weight, y, H, x2d.stride(0), y.stride(0), float(eps), BLOCK=block,
                           num_warps=rms_num_warps(block))
    return y


def _add_rms_norm_triton(x2d, r2d, weight, eps):
    """Launch one program per row of x2d/r2d[M, H] (last dim contiguous) -> (h, y)."""
    require_triton("add_rms_norm")
    M, H = x2d.shape
    h = torch.empty((M, H), device=x2d.device, dtype=x2d.dtype)
    y = torch.empty_like(h)
    if M == 0:
        return h, y
    block = triton.next_power_of_2(H)
    _add_rms_norm_kernel[(M,)](x2d, r2d, weight, h, y, H, x2d.stride(0), r2d.stride(0), h.stride(0), y.stride(0),
                               float(eps), BLOCK=block, num_warps=rms_num_warps(block))
    return h, y


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


def rms_norm_backward(x2d, weight, eps, grad_y, needs_x: bool, needs_w: bool):
    """(grad_x, grad_w) of `rms_norm_reference` at x2d, recomputed with autograd (None where not needed)."""
    with torch.enable_grad():
        xg = x2d.detach().requires_grad_(needs_x)
        wg = weight.detach().requires_grad_(needs_w)
        y = rms_norm_reference(xg, wg, eps)
        inputs = [t for t in (xg, wg) if t.requires_grad]
        grads = list(torch.autograd.grad(y, inputs, grad_y)) if inputs else []
    grad_x = grads.pop(0) if needs_x else None
    grad_w = grads.pop(0) if needs_w else None
    return grad_x, grad_w


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
        grad_x, grad_w = rms_norm_backward(x2d, weight, ctx.eps, grad_y, *ctx.needs_input_grad[:2])
        return grad_x, grad_w, None


class _AddRMSNorm(torch.autograd.Function):
    """(h, y) = (r + x, rms_norm(r + x)); backward = autograd of the unfused pair: d(h) = grad_h + d(norm)."""

    @staticmethod
    def forward(ctx, x2d, r2d, weight, eps):
        if use_triton(x2d, r2d, weight):
            h, y = _add_rms_norm_triton(x2d, r2d, weight, eps)
        else:
            h = r2d + x2d
            y = _rms_norm_cpu(h, weight, eps)
        ctx.save_for_backward(h, weight)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return h, y

    @staticmethod
    def backward(ctx, grad_h, grad_y):
        h, weight = ctx.saved_tensors
        grad_norm, grad_w = None, None
        if grad_y is not None:
            needs_h = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            grad_norm, grad_w = rms_norm_backward(h, weight, ctx.eps, grad_y, needs_h, ctx.needs_input_grad[2])
        if grad_h is None or grad_norm is None:
            grad_sum = grad_h if grad_norm is None else grad_norm
        else:
            grad_sum = grad_h + grad_norm
        grad_x = grad_sum if ctx.needs_input_grad[0] else None
        grad_r = grad_sum if ctx.needs_input_grad[1] else None
        return grad_x, grad_r, grad_w, None


def _check_rms_args(op: str, x, weight, eps) -> None:
    check_tensor(op, "x", x)
    check_tensor(op, "weight", weight)
    check(x.dim() >= 1 and weight.dim() == 1 and x.shape[-1] == weight.shape[0], op,
          f"x must be [..., H] and weight [H]; got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    check(0 < x.shape[-1] <= MAX_HIDDEN, op, f"H={x.shape[-1]} must be in 1..{MAX_HIDDEN}")
    check(weight.dtype == x.dtype, op, f"weight ({weight.dtype}) must have x's dtype ({x.dtype})")
    check(isinstance(eps, (int, float)) and eps > 0, op, f"eps must be a positive float, got {eps!r}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of x[..., H] with weight[H] -> x.dtype; batch invariant; autograd."""
    _check_rms_args("rms_norm", x, weight, eps)
    check_same_device("rms_norm", x=x, weight=weight)
    out = _RMSNorm.apply(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous(), float(eps))
    return out.reshape(x.shape)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """(h, y) with h = residual + x and y = rms_norm(h, weight, eps), bitwise as those two ops unfused (one
    launch on GPU: the residual add before each decoder norm); autograd wrt x, residual and weight."""
    _check_rms_args("add_rms_norm", x, weight, eps)
    check_tensor("add_rms_norm", "residual", residual)
    check(residual.shape == x.shape and residual.dtype == x.dtype, "add_rms_norm",
          f"residual must have x's shape {tuple(x.shape)} and dtype {x.dtype}; got {tuple(residual.shape)}, "
          f"{residual.dtype}")
    check_same_device("add_rms_norm", x=x, residual=residual, weight=weight)
    H = x.shape[-1]
    h, y = _AddRMSNorm.apply(x.reshape(-1, H).contiguous(), residual.reshape(-1, H).contiguous(),
                             weight.contiguous(), float(eps))
    return h.reshape(x.shape), y.reshape(x.shape)
