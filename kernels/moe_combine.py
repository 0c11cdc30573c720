"""MoE output combine, batch invariant: `moe_combine(rows, weights, pair_row)` -> out [T, N] with
out[t] = sum over ranks j = 0..k-1, in that order, of weights[t, j] * rows[pair_row[t, j]], in fp32, rounded
once to rows' dtype. Elementwise ops in a fixed order per token: its result does not depend on its batch.
(transformers multiplies by weights rounded to the model dtype and adds each expert's output into the result in
the model dtype, in expert-id order; in fp32 the two agree to rounding.)
Backward: rows' gradient written to each pair's row (each row belongs to one pair: no accumulation), the
weights' gradient a row dot product (CPU: `tree_sum_last`, thread invariant; GPU: torch sum, deterministic).
Left out: a fused Triton kernel (the combine is memory bound and small beside the expert GEMMs).
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import check, tree_sum_last


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
