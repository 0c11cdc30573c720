"""Batch-invariant LoRA shrink GEMM: `lora_shrink(x, a)` = x[..., K] @ a[R, K].T for a thin R (an adapter's rank,
or a few adapters' A stacked), the first of the two adapter GEMMs; the second (R -> the projection's width)
is `matmul`.

GPU, bf16/fp16 with a row-major `a` (`matmul._tma_ok`): the Hopper TMA GEMM (`_gemm_tma.py`) with the thin tile
config `shrink_config(K, R)`: K cut into SHRINK_PIECE_K pieces, so at decode (few rows, one output tile) the
pieces run as parallel programs plus the ordered piece sum instead of one program walking all of K; at large M
whole-K programs add the same pieces in the same order -- the same bits (see `_gemm_tma.py`). The config is a
function of (K, R) only, never of M. Other GPU cases: the pointer GEMM (`matmul._mm_triton`). CPU: the
fixed-tile `_mm_cpu`, as `matmul`/`linear`. Backward: `grad_mm`, as `linear`. `invariant_mode(False)`: torch's
`F.linear`. Left out: fusing the second GEMM or the add into the output projection's epilogue.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import check, check_same_device, check_tensor, is_invariant, use_triton
from onpolicy.kernels.matmul import _linear_tma, _mm_cpu, _mm_triton, _tma_ok, grad_mm

SHRINK_PIECE_K = 256  # K piece: K = 4096 gives 16 parallel pieces for a one-tile (decode) product


def shrink_config(K: int, R: int) -> dict:
    """TMA tile config of an [M, K] x [R, K].T product: BLOCK_N the power of two covering R (16 to 256); a
    property of (K, R) only."""
    block_n = min(256, max(16, 1 << max(R - 1, 0).bit_length()))
    return dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=64, GROUP_M=8, num_warps=4 if block_n <= 64 else 8,
                num_stages=4, PIECE_K=min(SHRINK_PIECE_K, -(-K // 64) * 64), OCC=2)


def _shrink_invariant(x2d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    if not use_triton(x2d, a):
        return _mm_cpu(x2d, a.t())
    if _tma_ok(x2d, a):
        return _linear_tma(x2d, a, None, shrink_config(a.shape[1], a.shape[0]))
    return _mm_triton(x2d, a.t())


def lora_shrink_reference(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """torch's default `F.linear` (not batch invariant)."""
    return F.linear(x, a)


class _Shrink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, a):
        ctx.save_for_backward(x2d, a)
        return _shrink_invariant(x2d, a)

    @staticmethod
    def backward(ctx, grad_out):
        x2d, a = ctx.saved_tensors
        grad_x = grad_mm(grad_out, a) if ctx.needs_input_grad[0] else None
        grad_a = grad_mm(grad_out.t(), x2d) if ctx.needs_input_grad[1] else None
        return grad_x, grad_a


def lora_shrink(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x[..., K] @ a[R, K].T -> [..., R] in x.dtype; batch invariant; autograd."""
    check_tensor("lora_shrink", "x", x)
    check_tensor("lora_shrink", "a", a)
    check(a.dim() == 2 and x.dim() >= 1 and x.shape[-1] == a.shape[1], "lora_shrink",
          f"x [..., K] and a [R, K] must share K, got {tuple(x.shape)} and {tuple(a.shape)}")
    check(x.dtype == a.dtype, "lora_shrink", f"x ({x.dtype}) and a ({a.dtype}) must have one dtype")
    check_same_device("lora_shrink", x=x, a=a)
    if not is_invariant():
        return lora_shrink_reference(x, a)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or a.requires_grad)
    out = _Shrink.apply(x2d, a) if needs_grad else _shrink_invariant(x2d, a)
    return out.reshape(*lead, a.shape[0])
