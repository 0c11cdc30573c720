"""Rank plumbing and deterministic reductions for data parallel on N processes (`accelerate launch`).

    dist = Dist.current()                    # world size 1 (no process group) or torch.distributed's
    mine = dist.share(range(n_prompts))      # this rank's contiguous prompts (whole GRPO groups)
    everyone = dist.gather(obj)              # every rank's object, in rank order (global order)
    dist.tree_sum_(flat_fp32)                # same bits on every rank, run after run

Reduction chunks: each mini-batch is cut into `trainer.reduction_chunks` contiguous chunks of whole groups
(null: the world size). Rank r owns chunks [r*C/W, (r+1)*C/W); each chunk's gradient is accumulated from zero
over micro-batches planned within the chunk, then the chunks are summed in one binary tree: first locally over
the rank's own (aligned) subtree (`ChunkTree`), then across ranks by recursive doubling (`tree_sum_`, partner
rank ^ 2^k at level k). fp32 addition is commutative bitwise (a+b == b+a), so every rank ends with the same
((g0+g1)+(g2+g3)) and the result does not depend on how the C chunks are spread over 1, 2, 4, ... ranks.
C and W must be powers of two with W | C (onpolicy.trainer.launch checks it before compute). Cost of the fixed
order vs NCCL's all_reduce: each rank sends log2(W) full fp32 gradients (a ring all_reduce sends 2(W-1)/W of
one), no overlap with the backward, and up to log2(C/W)+2 flat fp32 gradient buffers (the tree's partial sums
and the receive buffer).
Metrics: every rank gets the whole step's rollout (gathered in rank order) and scores it, so rewards and
advantages are world size 1's; loss and parity gather per-token values and reduce them in global order.
`trainer.grad_reduction: all_reduce` replaces the cross-rank tree by the backend's all_reduce (for measuring
the tree's cost: scripts/bench_scale.py). Under FSDP2 (onpolicy.trainer.parallel) FSDP reduce-scatters the
gradients itself and this module's chunk reduction stands aside (one chunk per rank).
Left out: NCCL algorithm pinning for DDP (we order the sums ourselves), bucketed overlap with the backward,
non-power-of-two world sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def reduction_chunks(cfg, world_size: int) -> int:
    """trainer.reduction_chunks, null meaning the world size."""
    chunks = cfg.trainer.reduction_chunks
    return world_size if chunks is None else chunks


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; world_size 1 without an initialised process group. How the trainer is
    spread over the ranks (replicated, FSDP2) is onpolicy.trainer.parallel's choice."""
    rank: int = 0
    world_size: int = 1

    @staticmethod
    def current() -> "Dist":
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            return Dist(td.get_rank(), td.get_world_size())
        return Dist()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: range) -> range:
        """This rank's contiguous equal share of `items` (the caller checked divisibility)."""
        n = len(items) // self.world_size
        return range(items.start + self.rank * n, items.start + (self.rank + 1) * n)

    def gather(self, obj) -> list:
        """`obj` of every rank in rank order (tensors inside should be on the CPU)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as td

        out = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as td

            td.barrier()

    def tree_sum_(self, flat: torch.Tensor) -> torch.Tensor:
        """In place: the sum of every rank's `flat` by recursive doubling (level k adds the partner rank ^ 2^k's
        running sum); the same bits on every rank, in the order of a binary tree over ranks."""
        import torch.distributed as td

        level = 1
        recv = torch.empty_like(flat) if self.world_size > 1 else None
        while level < self.world_size:
            peer = self.rank ^ level
            ops = [td.P2POp(td.isend, flat, peer), td.P2POp(td.irecv, recv, peer)]
            for req in td.batch_isend_irecv(ops):
                req.wait()
            flat.add_(recv)  # own + peer == peer + own bitwise: both ranks hold the same sum
            level *= 2
        return flat


class ChunkTree:
    """Sums chunk gradients (flat fp32) pushed in chunk order as a binary tree: ((g0+g1)+(g2+g3))...;
    holds at most log2(n)+1 buffers. `push` count must be a power of two for the tree to be the full one."""

    def __init__(self):
        self.stack: list[tuple[int, torch.Tensor]] = []

    def push(self, flat: torch.Tensor) -> None:
        level = 0
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            flat = left.add_(flat)
            level += 1
        self.stack.append((level, flat))

    def result(self) -> torch.Tensor:
        if len(self.stack) != 1:
            raise RuntimeError(f"ChunkTree: {len(self.stack)} partial sums left; push a power-of-two count")
        return self.stack[0][1]


def take_master_grads(optimizer) -> torch.Tensor:
    """The fp32 master gradients as one flat vector (zeros for parameters without one); clears them."""
    optimizer.accumulate_grads()
    parts = [m.grad.reshape(-1) if m.grad is not None else torch.zeros(m.numel(), device=m.device)
             for m in optimizer.masters]
    flat = torch.cat(parts)
    optimizer.zero_grad()
    return flat


@torch.no_grad()
def put_master_grads(optimizer, flat: torch.Tensor) -> None:
    """Set every fp32 master's gradient from the flat vector (`take_master_grads` layout)."""
    offset = 0
    for m in optimizer.masters:
        n = m.numel()
        m.grad = flat[offset:offset + n].view_as(m).clone()
        offset += n


class GradReduction:
    """One optimizer update's chunked gradient reduction (see the module docstring) of `optimizer`'s fp32 master
    gradients over `chunks` chunks; inactive (`active` False: one chunk on one rank, or FSDP2, which
    reduce-scatters in the backward) every method but the planning ones is a no-op. `all_reduce`: the backend's
    all_reduce instead of the fixed-order tree across ranks (trainer.grad_reduction)."""

    def __init__(self, dist: Dist, optimizer, device: torch.device, chunks: int, num_seqs: int, *,
                 active: bool, all_reduce: bool):
        self.dist, self.optimizer, self.device, self.chunks = dist, optimizer, device, chunks
        self.size = num_seqs // self.chunks  # whole groups: the config and the launch checked reduction_chunks
        self.tree = ChunkTree()
        self.active = active
        self.all_reduce = all_reduce

    def my_chunks(self, rank: int | None = None) -> list[range]:
        """This rank's chunks (or `rank`'s): sequence ranges relative to the mini-batch, in order."""
        per_rank = self.chunks // self.dist.world_size
        first = (self.dist.rank if rank is None else rank) * per_rank
        return [range(k * self.size, (k + 1) * self.size) for k in range(first, first + per_rank)]

    def chunk_done(self) -> None:
        """Move the finished chunk's gradient (accumulated from zero) into the tree."""
        if self.active:
            self.tree.push(take_master_grads(self.optimizer))

    def finish(self) -> None:
        """Local tree, then recursive doubling across ranks; the masters hold the global gradient."""
        if not self.active:
            return
        flat = self.tree.result()
        if self.dist.world_size > 1 and self.all_reduce:
            import torch.distributed as td

            td.all_reduce(flat)  # the backend's order (bench_scale's comparison), not run-to-run bitwise
        elif self.dist.world_size > 1:
            self.dist.tree_sum_(flat)
        put_master_grads(self.optimizer, flat)

    def loss_parts(self, parts: list) -> list:
        """Every rank's micro-batch loss parts (detached), in global order, on this rank's device."""
        if self.dist.world_size == 1:
            return parts
        device = self.device
        mine = [_detached(p, "cpu") for p in parts]
        return [_detached(p, device) for rank_parts in self.dist.gather(mine) for p in rank_parts]


def gather_parity(dist: Dist, sampler: list, trainer: list, routes: torch.Tensor | None = None) -> dict:
    """The parity metrics over every rank's sequences in global order (as world size 1 computes them) and,
    with several ranks, each rank's own as `rank<r>/onpolicy/...`. `routes`: MoE models' per-token flags of
    `onpolicy.model.routing.mode_routes_differ` (None: no `onpolicy/routing_mismatch`)."""
    from onpolicy.model.routing import routing_metrics
    from onpolicy.trainer.parity import parity_metrics

    def metrics(s, t, r) -> dict:
        return {**parity_metrics(s, t), **({} if r is None else routing_metrics(r))}

    if dist.world_size == 1:
        return metrics(sampler, trainer, routes)
    per_rank = dist.gather(([x.detach().cpu() for x in sampler], [x.detach().cpu() for x in trainer], routes))
    out = metrics([x for s, _, _ in per_rank for x in s], [x for _, t, _ in per_rank for x in t],
                  None if routes is None else torch.cat([r for _, _, r in per_rank]))
    for r, (s, t, f) in enumerate(per_rank):
        out.update({f"rank{r}/{k}": v for k, v in metrics(s, t, f).items()})
    return out


def _detached(part, device):
    from dataclasses import fields, replace

    moved = {f.name: getattr(part, f.name).detach().to(device) for f in fields(part)
             if isinstance(getattr(part, f.name), torch.Tensor)}
    return replace(part, **moved)
