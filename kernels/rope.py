"""Rotary position embedding (NeoX / HF `rotate_half` layout) in fp32, rounded once to x's dtype.

`rope_cache(max_positions, head_dim, theta, device)` builds the fp32 table once (HF inv_freq formula): row p
is [cos(p * inv_freq) | sin(p * inv_freq)], each half head_dim // 2 wide; `rope_table(inv_freq, ...)` builds it
from a scaling variant's frequencies and attention factor (still position-indexed, so batch invariant).
`rope(x[T, heads, D], positions[T], cache)` rotates every head of token t by position positions[t]:
    out = x * cos + rotate_half(x) * sin,  rotate_half(x) = [-x2, x1]
Elementwise per token, so batch invariant by construction; the Triton kernel runs one program per token (all
heads at once). The CPU path is `rope_reference` itself (only mul/add of fp32, which have no
vectorised-vs-scalar differences). Backward wrt x is the inverse rotation (sin -> -sin), plain torch.
Left out: the scaling variants' frequency formulas (the model takes them from transformers), rope types whose
frequencies depend on the batch's longest sequence (dynamic NTK, longrope), the GPT-J interleaved layout,
bounds checks of positions on CUDA (they would force a host sync; CPU positions are checked).
"""
from __future__ import annotations

import numbers

import torch

from onpolicy.kernels._common import (check, check_in_range, check_same_device, check_tensor, require_triton,
                                      tl, triton, use_triton)

def rope_cache(max_positions: int, head_dim: int, theta: float, device="cpu") -> torch.Tensor:
    """fp32 [max_positions, head_dim]: cos(p * inv_freq) in the first half, sin in the second (HF formula)."""
    check(isinstance(head_dim, numbers.Integral) and head_dim > 0 and head_dim % 2 == 0, "rope_cache",
          f"head_dim must be a positive even int, got {head_dim!r}")
    check(theta > 0, "rope_cache", f"theta must be > 0, got {theta!r}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float32) / head_dim
    return rope_table(1.0 / (theta ** exponent), max_positions, head_dim)


def rope_table(inv_freq: torch.Tensor, max_positions: int, head_dim: int, attention_scaling: float = 1.0
               ) -> torch.Tensor:
    """fp32 [max_positions, head_dim] from given inverse frequencies (a rope scaling variant's, e.g. from HF's
    ROPE_INIT_FUNCTIONS): row p = [cos(p * inv_freq) | sin(p * inv_freq)] times `attention_scaling` (YaRN's
    mscale; 1.0 leaves the product exact). Fewer than head_dim // 2 frequencies (partial rotary): the rest of
    each half is cos 1, sin 0, so those dims pass unrotated (the model places them there)."""
    check(isinstance(max_positions, numbers.Integral) and max_positions > 0, "rope_cache",
          f"max_positions must be a positive int, got {max_positions!r}")
    check(isinstance(head_dim, numbers.Integral) and head_dim > 0 and head_dim % 2 == 0, "rope_cache",
          f"head_dim must be a positive even int, got {head_dim!r}")
    check(isinstance(inv_freq, torch.Tensor) and inv_freq.dim() == 1 and inv_freq.dtype == torch.float32
          and 0 < inv_freq.numel() <= head_dim // 2, "rope_cache",
          f"inv_freq must be a 1-D float32 tensor of at most head_dim // 2 = {head_dim // 2} values")
    pos = torch.arange(max_positions, device=inv_freq.device, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    pad = head_dim // 2 - inv_freq.numel()
    if pad:
        cos = torch.cat([cos, cos.new_ones(max_positions, pad)], dim=-1)
        sin = torch.cat([sin, sin.new_zeros(max_positions, pad)], dim=-1)
    return torch.cat([cos, sin], dim=-1).contiguous()


if triton is not None:

    @triton.jit
    def rotate_pair(x1, x2, cos, sin):
        """fp32 halves (x1, x2) of a head -> its rotation (x1 cos - x2 sin, x2 cos + x1 sin). The fma is explicit:
        left to LLVM, which product gets fused depends on the surrounding kernel (seen on sm_90: `_rope_kernel`
        and the fused q/k kernel fused different products of y2), so the bits would depend on the kernel."""
        return tl.fma(x1, cos, -(x2 * sin)), tl.fma(x2, cos, x1 * sin)

    @triton.jit
    def _rope_kernel(x_ptr, pos_ptr, cache_ptr, y_ptr, n_heads, stride_xt, stride_xh, stride_yt, stride_yh,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program = one token: rotate all its heads with the cos/sin row of its position."""
        t = tl.program_id(0).to(tl.int64)
        p = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        h = tl.arange(0, BLOCK_H)
        dmask = d < HALF
        cos = tl.load(cache_ptr + p * (2 * HALF) + d, mask=dmask, other=0.0)[None, :]
        sin = tl.load(cache_ptr + p * (2 * HALF) + HALF + d, mask=dmask, other=0.0)[None, :]
        mask = (h[:, None] < n_heads) & dmask[None, :]
        x_row = x_ptr + t * stride_xt + h[:, None] * stride_xh + d[None, :]
        x1 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_row + HALF, mask=mask, other=0.0).to(tl.float32)
        y1, y2 = rotate_pair(x1, x2, cos, sin)
        y_row = y_ptr + t * stride_yt + h[:, None] * stride_yh + d[None, :]
        tl.store(y_row, y1.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(y_row + HALF, y2.to(y_ptr.dtype.element_ty), mask=mask)


def _rope_triton(x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Launch one program per token; x[T, heads, D] may be strided in T and heads (last dim contiguous)."""
    require_triton("rope")
    T, H, D = x.shape
    y = torch.empty((T, H, D), device=x.device, dtype=x.dtype)
    if T == 0 or H == 0:
        return y
    block_h = triton.next_power_of_2(H)
    block_d = triton.next_power_of_2(D // 2)
    _rope_kernel[(T,)](x, positions, cache, y, H, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                       HALF=D // 2, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4)
    return y


def rope_reference(x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """HF apply_rotary_pos_emb math (rotate_half) in fp32, cast to x.dtype; also the CPU path. `inverse`
    rotates back (sin -> -sin): the backward wrt x."""
    half = x.shape[-1] // 2
    cs = cache[positions.long()]
    sin_half = -cs[:, half:] if inverse else cs[:, half:]
    cos = torch.cat([cs[:, :half], cs[:, :half]], -1)[:, None, :]
    sin = torch.cat([sin_half, sin_half], -1)[:, None, :]
    xf = x.float()
    rot = torch.cat([-xf[..., half:], xf[..., :half]], -1)
    return (xf * cos + rot * sin).to(x.dtype)


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, cache):
        ctx.save_for_backward(positions, cache)
        if use_triton(x, positions, cache):
            return _rope_triton(x, positions, cache)
        return rope_reference(x, positions, cache)

    @staticmethod
    def backward(ctx, grad_y):
        positions, cache = ctx.saved_tensors
        return rope_reference(grad_y, positions, cache, inverse=True), None, None


def _check_rope(x, positions, cache):
    check_tensor("rope", "x", x)
    check(x.dim() == 3 and x.shape[-1] % 2 == 0, "rope", f"x must be [T, heads, D] with even D, got {tuple(x.shape)}")
    check_tensor("rope", "positions", positions, (torch.int32, torch.int64))
    check(positions.shape == (x.shape[0],), "rope", f"positions must be [T]=({x.shape[0]},), got {tuple(positions.shape)}")
    check_tensor("rope", "cache", cache, (torch.float32,))
    check(cache.dim() == 2 and cache.shape[1] == x.shape[-1], "rope",
          f"cache must be the [max_positions, head_dim={x.shape[-1]}] table from rope_cache, got {tuple(cache.shape)}")
    check_same_device("rope", x=x, positions=positions, cache=cache)
    if not positions.is_cuda:  # on CUDA the range check would sync the host every layer
        check_in_range("rope", "positions", positions, 0, cache.shape[0], "cache max_positions")


def rope(x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Rotate x[T, heads, D] by positions[T] using `rope_cache` -> x.dtype, contiguous; autograd wrt x."""
    _check_rope(x, positions, cache)
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _Rope.apply(x, positions.contiguous(), cache.contiguous())
