"""Batch-invariant LoRA adapter ops, the two halves of y + s * (x @ A.T) @ B.T:
`lora_shrink(x, a)` = x[..., K] @ a[R, K].T for a thin R (an adapter's rank, or a few adapters' A stacked), and
`lora_expand_add(y, t, b, blocks, scale)`: y plus s * t_j @ B_j.T on each adapted column block j of y, one op.

lora_shrink:
GPU, bf16/fp16 with a row-major `a` (`matmul._tma_ok`): the Hopper TMA GEMM (`_gemm_tma.py`) with the thin tile
config `shrink_config(K, R)`: K cut into SHRINK_PIECE_K pieces, so at decode (few rows, one output tile) the
pieces run as parallel programs plus the ordered piece sum instead of one program walking all of K; at large M
whole-K programs add the same pieces in the same order -- the same bits (see `_gemm_tma.py`). The config is a
function of (K, R) only, never of M. Other GPU cases: the pointer GEMM (`matmul._mm_triton`). CPU: the
fixed-tile `_mm_cpu`, as `matmul`/`linear`. Backward: `grad_mm`, as `linear`. `invariant_mode(False)`: torch's
`F.linear`.
lora_expand_add: for each targeted block j (columns [c_j, c_j + rows_j) of y, columns [t_j, t_j + r) of t, rows
[b_j, b_j + rows_j) of b): out = round(float(y) + s * (t_j @ b_j.T)), the product accumulated in fp32 over r in
one fixed order; untargeted columns are copied. GPU: one Triton kernel over [BLOCK_M, BLOCK_N] tiles of the whole
width (a tile never straddles two blocks: BLOCK_N divides every block start), the r-sum one `tl.dot` per tile;
CPU: `_mm_cpu` per block in fp32, then the same elementwise formula. Backward: `grad_mm` per block.
Left out: fusing either GEMM into the base projection's epilogue.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import (check, check_same_device, check_tensor, is_invariant, require_triton, tl, triton,
                                     use_triton)
from onpolicy.kernels.matmul import _Linear, _linear_tma, _mm_cpu, _mm_triton, _tma_ok, grad_mm

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


class _Shrink(_Linear):
    """x @ a.T with the shrink's forward; the backward is `linear`'s (no bias)."""

    @staticmethod
    def forward(ctx, x2d, a, bias=None):
        ctx.save_for_backward(x2d, a)
        ctx.has_bias = False
        return _shrink_invariant(x2d, a)


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
    out = _Shrink.apply(x2d, a, None) if needs_grad else _shrink_invariant(x2d, a)
    return out.reshape(*lead, a.shape[0])


# ---- lora_expand_add ----------------------------------------------------------------------------------------
# A block: (column start in y, rows, column start in t or -1 when untargeted, row start in b); blocks tile y.
MAX_BLOCKS = 3


def expand_block_n(blocks) -> int:
    """The N tile of the expand kernel: the largest power of two <= 128 dividing every block start (0 when
    below 16: then the op composes torch ops instead); a property of the block layout only."""
    bn = 128
    while bn >= 16 and any(start % bn for start, _, _, _ in blocks):
        bn //= 2
    return bn if bn >= 16 else 0


if triton is not None:
    from onpolicy.kernels._common import dot

    @triton.jit
    def _expand_add_kernel(y_ptr, t_ptr, b_ptr, out_ptr, M, N, R, stride_y, stride_t, stride_b, stride_o, scale,
                           S1, S2, T0, T1, T2, B0, B1, B2, IEEE: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
        """One [BLOCK_M, BLOCK_N] tile of out: y + scale * t[:, T_j:T_j+R] @ b[B_j + n - S_j, :R].T in block j
        (the block holding the tile: starts 0, S1, S2; T_j < 0: untargeted, a copy of y)."""
        pid_m = tl.program_id(0)
        n0 = tl.program_id(1) * BLOCK_N
        in1 = n0 >= S1
        in2 = n0 >= S2
        start = tl.where(in2, S2, tl.where(in1, S1, 0))
        t_off = tl.where(in2, T2, tl.where(in1, T1, T0))
        b_off = tl.where(in2, B2, tl.where(in1, B1, B0))
        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        mask = mask_m[:, None] & mask_n[None, :]
        val = tl.load(y_ptr + offs_m[:, None] * stride_y + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        if t_off >= 0:
            offs_r = tl.arange(0, BLOCK_R)
            mask_r = offs_r < R
            tt = tl.load(t_ptr + offs_m[:, None] * stride_t + t_off + offs_r[None, :],
                         mask=mask_m[:, None] & mask_r[None, :], other=0.0)
            bt = tl.load(b_ptr + (b_off + offs_n[None, :] - start).to(tl.int64) * stride_b + offs_r[:, None],
                         mask=mask_r[:, None] & mask_n[None, :], other=0.0)
            acc = dot(tt, bt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), IEEE)
            val = val + scale * acc
        tl.store(out_ptr + offs_m[:, None] * stride_o + offs_n[None, :], val.to(out_ptr.dtype.element_ty), mask=mask)


def _expand_triton(y, t, b, blocks, scale, block_n):
    require_triton("lora_expand_add")
    M, N = y.shape
    out = torch.empty_like(y)
    if M == 0:
        return out
    padded = list(blocks) + [(N, 0, -1, 0)] * (MAX_BLOCKS - len(blocks))
    starts = [blk[0] for blk in padded]
    r = b.shape[1]
    grid = (triton.cdiv(M, 64), triton.cdiv(N, block_n))
    _expand_add_kernel[grid](y, t, b, out, M, N, r, y.stride(0), t.stride(0), b.stride(0), out.stride(0),
                             float(scale), starts[1], starts[2], *[blk[2] for blk in padded],
                             *[blk[3] for blk in padded], IEEE=y.dtype == torch.float32, BLOCK_M=64,
                             BLOCK_N=block_n, BLOCK_R=max(16, 1 << max(r - 1, 0).bit_length()), num_warps=4)
    return out


def _expand_torch(y, t, b, blocks, scale, mm):
    """The composed form (CPU, and layouts the kernel does not tile): per block fp32 product, one rounding."""
    out = y.clone()
    r = b.shape[1]
    for start, rows, t_off, b_off in blocks:
        if t_off < 0:
            continue
        prod = mm(t[:, t_off:t_off + r].float(), b[b_off:b_off + rows].float().t())
        out[:, start:start + rows] = (y[:, start:start + rows].float() + scale * prod).to(y.dtype)
    return out


def _expand_invariant(y, t, b, blocks, scale):
    if use_triton(y, t, b):
        block_n = expand_block_n(blocks)
        if block_n:
            return _expand_triton(y, t, b, blocks, scale, block_n)
        return _expand_torch(y, t, b, blocks, scale, _mm_triton)
    return _expand_torch(y, t, b, blocks, scale, _mm_cpu)


def lora_expand_add_reference(y, t, b, blocks, scale):
    """torch's default ops, the same formula (not batch invariant)."""
    return _expand_torch(y, t, b, blocks, scale, torch.mm)


class _ExpandAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, t, b, blocks, scale):
        ctx.save_for_backward(t, b)
        ctx.blocks, ctx.scale = blocks, scale
        return _expand_invariant(y, t, b, blocks, scale)

    @staticmethod
    def backward(ctx, grad_out):
        t, b = ctx.saved_tensors
        r = b.shape[1]
        grad_t = torch.zeros_like(t) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(b) if ctx.needs_input_grad[2] else None
        for start, rows, t_off, b_off in ctx.blocks:
            if t_off < 0:
                continue
            g = grad_out[:, start:start + rows] * ctx.scale
            if grad_t is not None:
                grad_t[:, t_off:t_off + r] = grad_mm(g, b[b_off:b_off + rows])
            if grad_b is not None:
                grad_b[b_off:b_off + rows] = grad_mm(g.t(), t[:, t_off:t_off + r])
        return grad_out if ctx.needs_input_grad[0] else None, grad_t, grad_b, None, None


def lora_expand_add(y: torch.Tensor, t: torch.Tensor, b: torch.Tensor, blocks: tuple, scale: float) -> torch.Tensor:
    """y[M, N] + scale * t[:, t_j:t_j+r] @ b[b_j:b_j+rows_j].T on each targeted column block j (see the module
    docstring; `blocks`: ((column start, rows, t column start or -1, b row start), ...) covering y's columns in
    order, at most 3); a new [M, N] tensor in y.dtype; batch invariant; autograd."""
    for name, tensor in (("y", y), ("t", t), ("b", b)):
        check_tensor("lora_expand_add", name, tensor)
    check(y.dim() == 2 and t.dim() == 2 and b.dim() == 2 and t.shape[0] == y.shape[0], "lora_expand_add",
          f"y [M, N], t [M, S * r] and b [rows, r] expected, got {tuple(y.shape)}, {tuple(t.shape)}, {tuple(b.shape)}")
    check(y.dtype == t.dtype == b.dtype, "lora_expand_add", "y, t and b must have one dtype")
    check(1 <= len(blocks) <= MAX_BLOCKS and blocks[0][0] == 0 and sum(blk[1] for blk in blocks) == y.shape[1]
          and all(a[0] + a[1] == c[0] for a, c in zip(blocks, blocks[1:])), "lora_expand_add",
          f"blocks must tile y's {y.shape[1]} columns in order (1 to {MAX_BLOCKS} blocks), got {blocks}")
    check_same_device("lora_expand_add", y=y, t=t, b=b)
    if not is_invariant():
        return lora_expand_add_reference(y, t, b, blocks, scale)
    if torch.is_grad_enabled() and (y.requires_grad or t.requires_grad or b.requires_grad):
        return _ExpandAdd.apply(y, t, b, tuple(blocks), float(scale))
    return _expand_invariant(y, t, b, blocks, scale)
