"""Grouped expert GEMM, batch invariant: `grouped_linear(x, weight, layout, gather)` -> y [P, N] with
y[r] = a[r] @ weight[e].T for each padded row r of the `moe_layout` (e = its block's expert; padding rows 0).

a = x[layout.row_token] (gather=True: x is [T, K] token-major, the rows are read in place by index) or x
itself (gather=False: x is [P, K] in the padded layout, e.g. the experts' activations).
GPU: one Triton program per [BLOCK_M, BLOCK_N] output tile of one expert's row block; it walks all of K in
BLOCK_K steps from k = 0 upward into one fp32 accumulator and rounds once; fp32 dots are "ieee". Tiles come
from `moe_tile_config(dtype)` only -- never from T, the expert's row count or which tokens share a block --
and each row is reduced on its own, so a token's result does not depend on which or how many other tokens
chose the same expert. No split-K, no atomics, no autotune; blocks of unused rows exit at once.
CPU: per expert, its real rows through the fixed-tile `matmul._mm_cpu` (64-row tiles, strict MKL): the same
bits for any batch and thread count.
Backward (autograd): dx = dy @ weight[e] on the same grouped kernel (CPU: fixed tiles), summed back to tokens
over the k ranks in rank order (gather=True); dweight[e] = dy_e.T @ a_e per expert (`matmul.grad_mm`:
deterministic; CPU thread invariant). Outside `invariant_mode` the CPU forward is a per-expert `F.linear` loop;
CUDA keeps the grouped kernel (a host-syncing loop could not be captured in the engine's CUDA graphs).
Left out: TMA / persistent scheduling, fp8, expert parallelism.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import check, check_tensor, is_invariant, require_triton, tl, triton, use_triton
from onpolicy.kernels.matmul import _mm_cpu, grad_mm
from onpolicy.kernels.moe_combine import sum_pairs
from onpolicy.kernels.moe_routing import MoeLayout


def moe_tile_config(dtype: torch.dtype) -> dict:
    """Fixed tiles of the grouped GEMM for `dtype` (BLOCK_M is also the layout's row-block size)."""
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def moe_block_m(dtype: torch.dtype) -> int:
    return moe_tile_config(dtype)["BLOCK_M"]


if triton is not None:
    from onpolicy.kernels._common import dot

    @triton.jit
    def _grouped_kernel(a_ptr, rows_ptr, b_ptr, c_ptr, block_expert_ptr, num_blocks, N, K,
                        stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                        GATHER: tl.constexpr, IEEE: tl.constexpr, EVEN_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        """C[block rows, N] = A[rows] @ B[expert].T for one row block and column tile; full K loop in order."""
        pid = tl.program_id(0)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_blocks - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        if expert >= 0:
            offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            offs_k = tl.arange(0, BLOCK_K)
            if GATHER:
                rows = tl.load(rows_ptr + offs_m)
                mask_m = rows[:, None] >= 0
                rows = tl.maximum(rows, 0)
            else:
                rows = offs_m
                mask_m = offs_m[:, None] >= 0
            a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
            b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
            mask_n = offs_n[None, :] < N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                if EVEN_K:
                    a = tl.load(a_ptrs, mask=mask_m, other=0.0)
                    b = tl.load(b_ptrs, mask=mask_n, other=0.0)
                else:
                    k_left = K - k0
                    a = tl.load(a_ptrs, mask=mask_m & (offs_k[None, :] < k_left), other=0.0)
                    b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n, other=0.0)
                acc = dot(a, b, acc, IEEE)
                a_ptrs += BLOCK_K * stride_ak
                b_ptrs += BLOCK_K * stride_bk
            c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_n)


def _grouped_triton(a: torch.Tensor, weight: torch.Tensor, layout: MoeLayout, gather: bool) -> torch.Tensor:
    """Launch on a [T or P, K] and weight [E, N, K] (any strides: the backward passes a transposed view)."""
    require_triton("grouped_linear")
    cfg = dict(moe_tile_config(a.dtype))
    check(cfg["BLOCK_M"] == layout.block_m, "grouped_linear",
          f"layout.block_m must be {cfg['BLOCK_M']} for {a.dtype}, got {layout.block_m}")
    P, (_, N, K) = layout.num_rows, weight.shape
    c = torch.empty((P, N), device=a.device, dtype=a.dtype)
    blocks = P // cfg["BLOCK_M"]
    if blocks == 0 or N == 0:
        return c
    grid = (blocks * triton.cdiv(N, cfg["BLOCK_N"]),)
    _grouped_kernel[grid](
        a, layout.row_token, weight, c, layout.block_expert, blocks, N, K,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), weight.stride(2), c.stride(0), c.stride(1),
        GATHER=gather, IEEE=a.dtype == torch.float32, EVEN_K=K % cfg["BLOCK_K"] == 0, **cfg)
    return c


def _expert_rows(layout: MoeLayout) -> list[tuple[int, int, int]]:
    """(expert, first padded row, real rows) of each expert with rows (one host sync)."""
    starts, counts = layout.expert_start.tolist(), layout.expert_count.tolist()
    return [(e, s, c) for e, (s, c) in enumerate(zip(starts, counts)) if c]


def _grouped_loop(a, weight, layout, gather, mm) -> torch.Tensor:
    """Per expert: its real rows through `mm(a_e, weight[e].T)`; padding rows 0."""
    y = a.new_zeros((layout.num_rows, weight.shape[1]))
    for e, s, c in _expert_rows(layout):
        a_e = a[layout.row_token[s : s + c]] if gather else a[s : s + c]
        y[s : s + c] = mm(a_e, weight[e].t())
    return y


def _forward(a, weight, layout, gather) -> torch.Tensor:
    if use_triton(a, weight):  # both modes: the loop below syncs with the host, which CUDA graphs cannot capture
        return _grouped_triton(a, weight, layout, gather)
    if not is_invariant():
        return _grouped_loop(a, weight, layout, gather, lambda x, wt: F.linear(x, wt.t()))
    return _grouped_loop(a, weight, layout, gather, _mm_cpu)


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, weight, layout, gather):
        ctx.save_for_backward(a, weight)
        ctx.layout, ctx.gather = layout, gather
        return _forward(a, weight, layout, gather)

    @staticmethod
    def backward(ctx, grad_y):
        a, weight = ctx.saved_tensors
        layout, gather = ctx.layout, ctx.gather
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            wt = weight.transpose(1, 2)  # [E, K, N]: dy @ weight[e] on the same grouped GEMM
            grad_rows = _forward(grad_y.contiguous(), wt, layout, False)
            grad_a = sum_pairs(grad_rows, layout.pair_row) if gather else grad_rows
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            for e, s, c in _expert_rows(layout):
                a_e = a[layout.row_token[s : s + c]] if gather else a[s : s + c]
                grad_w[e] = grad_mm(grad_y[s : s + c].t().contiguous(), a_e)
        return grad_a, grad_w, None, None


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, layout: MoeLayout, gather: bool) -> torch.Tensor:
    """[P, N] rows a[r] @ weight[expert(r)].T (a = x[layout.row_token] if gather else x); batch invariant;
    autograd."""
    check_tensor("grouped_linear", "x", x)
    check_tensor("grouped_linear", "weight", weight)
    check(x.dim() == 2 and weight.dim() == 3 and x.shape[1] == weight.shape[2], "grouped_linear",
          f"x must be [rows, K] and weight [E, N, K] with one K, got {tuple(x.shape)} and {tuple(weight.shape)}")
    check(x.dtype == weight.dtype, "grouped_linear", f"x ({x.dtype}) and weight ({weight.dtype}) must have one dtype")
    check(x.device == weight.device, "grouped_linear", "x and weight must be on one device")
    check(gather or x.shape[0] == layout.num_rows, "grouped_linear",
          f"x must have the layout's {layout.num_rows} rows when gather is False, got {x.shape[0]}")
    return _GroupedLinear.apply(x.contiguous(), weight, layout, gather)


def grouped_linear_reference(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[T, k, N]: x[t] @ weight[ids[t, j]].T with torch's F.linear, one expert at a time (not batch invariant)."""
    out = x.new_zeros(ids.shape + (weight.shape[1],))
    for e in ids.unique().tolist():
        t, j = (ids == e).nonzero(as_tuple=True)
        out[t, j] = F.linear(x[t], weight[e])
    return out
