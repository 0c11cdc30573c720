"""MoE output combine, batch invariant: `moe_combine(rows, weights, pair_row)` -> out [T, N] with
out[t] = sum over ranks j = 0..k-1, in that order, of weights[t, j] * rows[pair_row[t, j]], in fp32, rounded
once to rows' dtype. Elementwise ops in a fixed order per token: its result does not depend on its batch.
(transformers multiplies by weights rounded to the model dtype and adds each expert's output into the result in
the model dtype, in expert-id order; in fp32 the two agree to rounding.)
GPU: one Triton program per (token, 1024-column block) reads the token's k rows and weights and accumulates in
fp32 in rank order (one pass over the expert outputs); CPU: the same sum as torch ops (`sum_pairs`).
Backward: rows' gradient written to each pair's row (each row belongs to one pair: no accumulation), the
weights' gradient a row dot product (CPU: `tree_sum_last`, thread invariant; GPU: torch sum, deterministic).
Left out: fusing the combine into the down-projection GEMM's epilogue.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import check, require_triton, tl, tree_sum_last, triton, use_triton

BLOCK_N = 1024

if triton is not None:

    @triton.jit
    def _combine_kernel(rows_ptr, w_ptr, pair_row_ptr, out_ptr, N, stride_r, stride_o,
                        TOP_K: tl.constexpr, BLOCK: tl.constexpr):
        """out[t, cols] = sum over j = 0..TOP_K-1 in order of w[t, j] * rows[pair_row[t, j], cols], fp32."""
        t = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            r = tl.load(pair_row_ptr + t * TOP_K + j)
            w = tl.load(w_ptr + t * TOP_K + j).to(tl.float32)
            acc += w * tl.load(rows_ptr + r * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + t * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _combine_triton(rows: torch.Tensor, weights: torch.Tensor, pair_row: torch.Tensor) -> torch.Tensor:
    """Launch on rows [P, N] (unit column stride), weights fp32 [T, k], pair_row int64 [T, k]."""
    require_triton("moe_combine")
    t, k = pair_row.shape
    n = rows.shape[1]
    out = torch.empty((t, n), device=rows.device, dtype=rows.dtype)
    if t == 0 or n == 0:
        return out
    _combine_kernel[(t, triton.cdiv(n, BLOCK_N))](rows, weights.float().contiguous(), pair_row.contiguous(), out, n,
                                                  rows.stride(0), out.stride(0), TOP_K=k, BLOCK=BLOCK_N, num_warps=4)
    return out


def sum_pairs(rows: torch.Tensor, pair_row: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """out[t] = sum over j = 0..k-1 in order of (weights[t, j] *) rows[pair_row[t, j]], fp32, one rounding."""
    acc = None
    for j in range(pair_row.shape[1]):
        term = rows.index_select(0, pair_row[:, j]).float()
        if weights is not None:
            term = term * weights[:, j : j + 1].float()
        acc = term if acc is None else acc + term
    return acc.to(rows.dtype)


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weights, pair_row):
        ctx.save_for_backward(rows, weights, pair_row)
        if use_triton(rows, weights, pair_row):
            return _combine_triton(rows.contiguous(), weights, pair_row)
        return sum_pairs(rows, pair_row, weights)

    @staticmethod
    def backward(ctx, grad_out):
        rows, weights, pair_row = ctx.saved_tensors
        g = grad_out.float()
        grad_rows = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_rows = torch.zeros_like(rows)
            for j in range(pair_row.shape[1]):
                grad_rows[pair_row[:, j]] = (g * weights[:, j : j + 1].float()).to(rows.dtype)
        if ctx.needs_input_grad[1]:
            cols = []
            for j in range(pair_row.shape[1]):
                prod = rows.index_select(0, pair_row[:, j]).float() * g
                cols.append(tree_sum_last(prod) if prod.device.type == "cpu" else prod.sum(-1))
            grad_w = torch.stack(cols, 1).to(weights.dtype)
        return grad_rows, grad_w, None


def moe_combine(rows: torch.Tensor, weights: torch.Tensor, pair_row: torch.Tensor) -> torch.Tensor:
    """[T, N]: each token's k expert rows weighted and summed in rank order (fp32); autograd."""
    check(rows.dim() == 2 and weights.dim() == 2 and pair_row.shape == weights.shape, "moe_combine",
          f"rows must be [P, N], weights and pair_row [T, k]; got {tuple(rows.shape)}, {tuple(weights.shape)}, "
          f"{tuple(pair_row.shape)}")
    return _Combine.apply(rows, weights, pair_row)
