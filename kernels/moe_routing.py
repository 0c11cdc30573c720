"""MoE routing, batch invariant: `moe_route` (softmax + top-k with a fixed tie rule) and `moe_layout` (which padded
row of the grouped GEMMs each (token, rank) pair occupies).

moe_route(logits [T, E], top_k, normalize) -> (weights fp32 [T, k], expert ids int64 [T, k]):
    p = softmax(logits) in fp32, computed as exp(l - max) / sum with the sum a `tree_sum_last` (elementwise adds
    in one fixed order, whatever T, the row's place or the thread count); experts ranked by p descending with a
    *stable* sort, so among equal probabilities the lowest expert id wins (torch.topk promises no tie order);
    the k first are chosen, their weights p (divided by their tree sum when `normalize`, Qwen3-MoE's
    `norm_topk_prob`). Everything is row-wise: a token's experts and weights do not depend on its batch.
    Gradients flow to the logits through the chosen p (the ranking itself has none).
moe_layout(ids, num_experts, block_m) -> MoeLayout: the T*k pairs (pair p = token * k + rank) sorted by expert
    (stable: by pair index within an expert), each expert's rows padded to a multiple of `block_m`, so every
    `block_m`-row block of the grouped GEMM belongs to one expert. Its size depends on T, k, E and block_m only
    (ceil(T*k / block_m) + min(E, T*k) blocks; unused blocks have expert -1), so it needs no host sync and a
    CUDA graph can capture it. Which rows share a block never changes a row's result: the GEMM reduces each
    row on its own (`moe_gemm.py`).
Left out: grouped / node-limited top-k (DeepSeek-V3), score correction biases, capacity limits / token dropping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onpolicy.kernels._common import check, check_tensor, tree_sum_last


@dataclass
class MoeLayout:
    """Where each (token, rank) pair sits in the padded, expert-sorted rows of the grouped GEMMs.

    row_token [P]: token of each padded row (-1: padding); pair_row [T, k]: padded row of each pair;
    block_expert [P / block_m]: expert of each row block (-1: unused); expert_start / expert_count [E]: first
    padded row and number of real rows of each expert (an expert's real rows are contiguous, padding after them).
    """

    row_token: torch.Tensor
    pair_row: torch.Tensor
    block_expert: torch.Tensor
    expert_start: torch.Tensor
    expert_count: torch.Tensor
    block_m: int

    @property
    def num_rows(self) -> int:
        return self.row_token.shape[0]


def softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax in fp32 from elementwise ops and a fixed-order tree sum (row-wise, batch invariant)."""
    x = logits.float()
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / tree_sum_last(e).unsqueeze(-1)


def moe_route(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [T, k], expert ids int64 [T, k]) of router `logits` [T, E], by rank; ties: lowest id."""
    check_tensor("moe_route", "logits", logits)
    check(logits.dim() == 2, "moe_route", f"logits must be [T, num_experts], got shape {tuple(logits.shape)}")
    check(isinstance(top_k, int) and 1 <= top_k <= logits.shape[1], "moe_route",
          f"top_k must be an int in [1, {logits.shape[1]}], got {top_k!r}")
    probs = softmax_fp32(logits)
    with torch.no_grad():
        ids = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights = probs.gather(1, ids)
    if normalize:
        weights = weights / tree_sum_last(weights).unsqueeze(-1)
    return weights, ids


def moe_route_reference(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Qwen3-MoE router maths: softmax in fp32, torch.topk (no tie rule), renormalise."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def num_layout_blocks(pairs: int, num_experts: int, block_m: int) -> int:
    """Row blocks that always suffice for `pairs` pairs over `num_experts` experts (padding <= block_m - 1 each)."""
    return -(-pairs // block_m) + min(num_experts, pairs)


@torch.no_grad()
def moe_layout(ids: torch.Tensor, num_experts: int, block_m: int) -> MoeLayout:
    """The padded expert-sorted layout of the pairs of `ids` [T, k] (int64 expert ids in [0, num_experts))."""
    check(isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.dtype == torch.int64, "moe_layout",
          "ids must be an int64 tensor [T, k]")
    t, k = ids.shape
    dev, n = ids.device, ids.numel()
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # pairs by expert, then by pair index
    sorted_expert = flat[order]
    bounds = torch.searchsorted(sorted_expert, torch.arange(num_experts + 1, device=dev, dtype=torch.int64))
    count = bounds[1:] - bounds[:-1]
    padded = (count + block_m - 1) // block_m * block_m
    end = torch.cumsum(padded, 0)
    start = end - padded
    blocks = num_layout_blocks(n, num_experts, block_m)
    dest = start[sorted_expert] + torch.arange(n, device=dev) - bounds[sorted_expert]  # padded row, sorted pairs
    pair_row = dest[torch.argsort(order)]  # gathers only (no scatter): capturable, deterministic
    block_starts = torch.arange(blocks, device=dev, dtype=torch.int64) * block_m
    owner = torch.searchsorted(end, block_starts, right=True)  # first expert whose rows end past the block
    block_expert = torch.where(owner < num_experts, owner, torch.full_like(owner, -1)).to(torch.int32)
    per_row = lambda b: b[:, None].expand(-1, block_m).reshape(-1)  # noqa: E731  (no repeat_interleave sync)
    row_expert = per_row(owner.clamp(max=num_experts - 1))
    rank = torch.arange(blocks * block_m, device=dev) - start[row_expert]
    real = per_row(owner < num_experts) & (rank < count[row_expert])
    row_pair = order[(bounds[row_expert] + rank).clamp(0, max(n - 1, 0))]
    row_token = torch.where(real, row_pair // k, torch.full_like(row_pair, -1))
    return MoeLayout(row_token, pair_row.view(t, k), block_expert, start, count, block_m)
