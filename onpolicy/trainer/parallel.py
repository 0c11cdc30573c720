"""Parallelism strategies: what differs between ways of spreading the trainer over ranks, chosen once.

    strategy = choose_strategy(Dist.current())       # FSDP2 when the accelerate config says FSDP, else Replicated
    strategy_class().check_launch(cfg, env, world)    # before any process group: its own settings
    optimizer = strategy.build_optimizer(model, trainable.select(model), cfg.trainer, device)
    module = strategy.train_module(model)             # what the trainer's forward/backward runs
    reduction = strategy.grad_reduction(cfg, optimizer, device, num_seqs)
    strategy.pad_micro_batches(module, planned, most) # equal collective counts across ranks
    strategy.save(root, step, state) / strategy.load(path, state)

`Replicated`: every rank holds the whole model and fp32 masters (`MasterWeightAdamW`); gradients are summed in a
fixed tree over reduction chunks (`distributed.GradReduction`); rank 0 writes checkpoints. `FSDP2`: the fp32
masters, gradients and AdamW state are sharded (`onpolicy.trainer.fsdp`); FSDP reduce-scatters each backward and
ranks with fewer micro-batches run idle ones; every rank writes its optimizer shard. In both, the optimizer's
`step()` hands the new weights to the engine's model (in place: the engine holds the same tensors).
Left out: tensor and expert parallelism (a third class with the same methods).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from onpolicy.trainer.distributed import Dist, GradReduction, reduction_chunks

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class CheckpointState:
    """What a checkpoint holds besides the step: the run's config, policy, optimizer, tokenizer and `extra`
    (the prompt iterator's position)."""
    cfg: Any
    model: torch.nn.Module
    optimizer: Any
    tokenizer: Any
    extra: dict


def adamw_kwargs(t) -> dict:
    """AdamW's settings from the `trainer` config section."""
    return dict(lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)


class Replicated:
    """The whole model and its fp32 masters on every rank (world size 1 included)."""

    shards_masters = False  # the engine's KV cache is sized beside a full set of masters (memory.kv_cache_blocks)

    def __init__(self, dist: Dist | None = None):
        self.dist = dist or Dist()

    @staticmethod
    def check_launch(cfg, env, world_size: int) -> None:
        """Errors before compute for settings this strategy cannot honour: none of its own."""

    @staticmethod
    def before_process_group() -> None:
        """Set-up that must precede the process group: none."""

    @staticmethod
    def needs_process_group(world_size: int) -> bool:
        return world_size > 1

    def build_optimizer(self, model, params: list[tuple[str, torch.nn.Parameter]], t, device: torch.device):
        """`MasterWeightAdamW` over `params` (name, parameter) of `model`."""
        from onpolicy.trainer.precision import MasterWeightAdamW

        return MasterWeightAdamW([p for _, p in params], **adamw_kwargs(t))

    def train_module(self, model) -> torch.nn.Module:
        return model

    def grad_reduction(self, cfg, optimizer, device, num_seqs: int) -> GradReduction:
        """This update's chunked gradient sum (a no-op with one chunk on one rank)."""
        chunks = reduction_chunks(cfg, self.dist.world_size)
        return GradReduction(self.dist, optimizer, device, chunks, num_seqs, active=chunks > 1,
                             all_reduce=cfg.trainer.grad_reduction == "all_reduce")

    def pad_micro_batches(self, module, planned: int, most: Callable[[], int]) -> None:
        """Nothing: ranks meet only in the reduction after the micro-batches."""

    def save(self, root: Path, step: int, state: CheckpointState) -> None:
        """Rank 0 writes the step (every rank holds the same weights and optimizer state); the others wait."""
        from onpolicy.trainer import checkpoint

        if self.dist.is_main:
            only = {"model_only": True} if state.cfg.trainer.save_only_model else {}
            checkpoint.save_checkpoint(root, step=step, model=state.model,
                                       optimizer=None if only else state.optimizer, tokenizer=state.tokenizer,
                                       extra=state.extra, keep=state.cfg.trainer.keep_checkpoints,
                                       meta={"config": state.cfg.to_dict(), "world_size": self.dist.world_size,
                                             **only})
        self.dist.barrier()

    def load(self, path, state: CheckpointState, device: torch.device):
        """Weights and optimizer state from `path` into `state`'s model and optimizer; -> the Checkpoint."""
        from onpolicy.trainer import checkpoint

        return checkpoint.load_checkpoint(path, model=state.model, optimizer=state.optimizer, device=device)

    def check_resume_layout(self, meta: dict, path) -> None:
        """A checkpoint with sharded optimizer state resumes only under FSDP2."""
        if meta.get("fsdp"):
            raise ValueError(f"trainer.resume: {path} was written with FSDP2; allowed: resume it with the "
                             "accelerate config it was written with")


class FSDP2(Replicated):
    """fp32 masters, gradients and AdamW state sharded by `fully_shard`; each rank's engine keeps a full copy."""

    shards_masters = True

    def __init__(self, dist: Dist):
        super().__init__(dist)
        self.module = None

    @staticmethod
    def check_launch(cfg, env, world_size: int) -> None:
        from onpolicy.trainer.fsdp import check_fsdp_env

        check_fsdp_env(cfg, env, world_size)

    @staticmethod
    def before_process_group() -> None:
        """NCCL's algorithm and protocol pinned (fsdp.NCCL_PINS) before its communicator exists."""
        from onpolicy.trainer.fsdp import pin_nccl

        pin_nccl()

    @staticmethod
    def needs_process_group(world_size: int) -> bool:
        return True  # fully_shard needs a device mesh, on one process too

    def build_optimizer(self, model, params, t, device):
        """The sharded fp32 trainer module (kept as `train_module`) and its `ShardedAdamW`."""
        from onpolicy.trainer.fsdp import ShardedAdamW, shard_trainer

        self.module = shard_trainer(model, device)
        return ShardedAdamW(self.module, model, names={n for n, _ in params}, **adamw_kwargs(t))

    def train_module(self, model) -> torch.nn.Module:
        return self.module

    def grad_reduction(self, cfg, optimizer, device, num_seqs: int) -> GradReduction:
        """One chunk per rank, inactive: FSDP reduce-scatters in the backward."""
        return GradReduction(self.dist, optimizer, device, self.dist.world_size, num_seqs,
                             active=False, all_reduce=False)

    def pad_micro_batches(self, module, planned: int, most: Callable[[], int]) -> None:
        """Every rank runs the same number of forward/backward collectives: idle ones up to `most()`."""
        from onpolicy.trainer.fsdp import idle_micro_batch

        for _ in range(most() - planned):
            idle_micro_batch(module)

    def save(self, root, step: int, state: CheckpointState) -> None:
        from onpolicy.trainer.fsdp import save_fsdp_checkpoint

        save_fsdp_checkpoint(self.dist, root, step, state)

    def load(self, path, state: CheckpointState, device: torch.device):
        """The policy (engine copy), then every rank's shard of the masters and AdamW state (collective)."""
        from onpolicy.trainer import checkpoint
        from onpolicy.trainer.fsdp import SHARDS_DIR

        ck = checkpoint.load_checkpoint(path, model=state.model, optimizer=None, device=device)
        state.optimizer.load_sharded(ck.path / SHARDS_DIR)
        return ck

    def check_resume_layout(self, meta: dict, path) -> None:
        """Only a sharded checkpoint of the same world size."""
        if not meta.get("fsdp"):
            raise ValueError(f"trainer.resume: {path} was written without FSDP2; allowed: resume it with the "
                             "accelerate config it was written with")
        if meta.get("world_size") != self.dist.world_size:
            raise ValueError(f"trainer.resume: {path} holds optimizer shards of world size {meta.get('world_size')}; "
                             f"allowed: --num_processes {meta.get('world_size')}")


ParallelStrategy = Replicated  # the interface: FSDP2 (and later strategies) override its methods


def strategy_class(env=None) -> type[Replicated]:
    """FSDP2 when the launcher's accelerate config asked for it (distributed_type: FSDP), else Replicated."""
    from onpolicy.trainer.fsdp import fsdp_requested

    return FSDP2 if fsdp_requested(env) else Replicated


def choose_strategy(dist: Dist, env=None) -> Replicated:
    """This run's strategy over the ranks of `dist` (`strategy_class`)."""
    return strategy_class(env)(dist)
