"""`Trainer`: one RL run's parts, owned in one place -- model, optimizer, sampler, logger and the parallelism
strategy chosen once at build time (onpolicy.trainer.parallel).

    trainer = build_trainer(cfg)                       # onpolicy.trainer.setup: checks, model, SFT, engine, resume
    rollout = trainer.rollouts.collect(rows, step)     # where rollouts come from (rollout.RolloutSource)
    metrics = trainer.update(scored, step)             # optimizer updates (update.update_policy)
    trainer.save(step)                                 # a checkpoint, as the strategy writes it

`TrainerParts` holds the parts a caller may swap: what is trainable (trainable.TrainableParams), where rollouts
come from (a factory `Trainer -> RolloutSource`), how they are scored (`scoring.score_rollouts`'s signature),
the trainer's logprobs (`update.trainer_logprobs`'s) and the per-micro-batch loss. Tests pass fakes through it;
LoRA and multi-turn environments plug in there. A benchmark builds a `Trainer` from its own model, optimizer
and engine and leaves the run-only parts (prompts, logger, rewards) out. Left out: several models (a critic).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from onpolicy.trainer.losses import slice_loss
from onpolicy.trainer.rollout import RolloutSource, SingleTurnRollouts
from onpolicy.trainer.scoring import score_rollouts
from onpolicy.trainer.trainable import FullFineTuning, TrainableParams
from onpolicy.trainer.update import UpdateParts, trainer_logprobs, update_policy

if TYPE_CHECKING:
    from onpolicy.config import ExperimentConfig
    from onpolicy.trainer.parallel import ParallelStrategy


@dataclass(frozen=True)
class TrainerParts:
    """The swappable parts of a Trainer (defaults: full fine-tuning, single-turn engine rollouts, score_rollouts,
    trainer_logprobs, slice_loss)."""
    trainable: TrainableParams = field(default_factory=FullFineTuning)
    rollouts: Callable[[Trainer], RolloutSource] = SingleTurnRollouts.for_trainer
    score_fn: Callable = score_rollouts
    logprobs_fn: Callable = trainer_logprobs
    loss_fn: Callable = slice_loss


class Trainer:
    """Owns one run's model (the engine's copy), optimizer, sampler, logger and parallelism strategy.
    `prompts`, `logger`, `rewards`, `threads` and `eval_rows` are what a full run adds (None in a benchmark);
    `start_step`, `setup_time` and `sft_stats` describe how it was built."""

    def __init__(self, cfg: ExperimentConfig, *, device: torch.device, strategy: ParallelStrategy,
                 model: torch.nn.Module, optimizer, sampler, tokenizer=None, parts: TrainerParts | None = None,
                 ref_model: torch.nn.Module | None = None, prompts=None, rewards: list | None = None,
                 eval_rows: list | None = None, threads=None):
        self.cfg, self.device, self.strategy, self.dist = cfg, device, strategy, strategy.dist
        self.model, self.optimizer, self.sampler, self.tokenizer = model, optimizer, sampler, tokenizer
        self.parts = parts or TrainerParts()
        self.ref_model, self.prompts, self.rewards, self.eval_rows = ref_model, prompts, rewards, eval_rows
        self.threads = threads
        self.logger: Any = None            # onpolicy.logging.RunLogger, set once the resumed step is known
        self.start_step, self.setup_time, self.sft_stats = 0, 0.0, {}
        self.update_parts = UpdateParts(cfg=cfg, device=device, model=model, module=strategy.train_module(model),
                                        optimizer=optimizer, strategy=strategy, loss_fn=self.parts.loss_fn,
                                        logprobs_fn=self.parts.logprobs_fn, ref_model=ref_model)
        self.rollouts: RolloutSource = self.parts.rollouts(self)

    def score(self, rows: list[dict], rollout, step: int):
        """The step's `ScoredBatch`: rewards, group advantages and loss mask of `rollout` (TrainerParts.score_fn)."""
        return self.parts.score_fn(self.cfg, rows, rollout, rewards=self.rewards, step=step)

    def update(self, scored, step: int) -> dict:
        """The optimizer updates of one step (update.update_policy); the engine's prefix cache is reset after
        them (its cached KV came from the old weights), whatever happens."""
        try:
            return update_policy(self.update_parts, scored, step)
        finally:
            self.sampler.reset_prefix_cache()

    def save(self, step: int) -> str:
        """Save after `step` completed steps (the prompt iterator's position and the config travel with it);
        returns the step directory. Out of disk space: `run_dir.DiskFull` naming the checkpoint directory."""
        from onpolicy.trainer.checkpoint import checkpoint_root
        from onpolicy.trainer.run_dir import disk_full

        root = checkpoint_root(self.cfg)
        try:
            self.strategy.save(root, step, self.checkpoint_state())
        except Exception as e:
            full = disk_full(e, root / f"step-{step}")
            if full is None:
                raise
            raise full from e
        return str(root / f"step-{step}")

    def load(self, path) -> int:
        """Load the checkpoint at `path` (weights, optimizer state, prompt position, RNG); -> its step."""
        ck = self.strategy.load(path, self.checkpoint_state(), self.device)
        if "prompts" not in ck.extra:
            raise ValueError(f"trainer.resume: {str(path)!r} has no prompt-iterator state (not written by train())")
        self.prompts.load_state_dict(ck.extra["prompts"])
        return int(ck.step)

    def checkpoint_state(self):
        from onpolicy.trainer.parallel import CheckpointState

        return CheckpointState(cfg=self.cfg, model=self.model, optimizer=self.optimizer, tokenizer=self.tokenizer,
                               extra={"prompts": self.prompts.state_dict()} if self.prompts is not None else {})

    def held_out_metrics(self) -> dict:
        """`eval/*`: the held-out evaluation (onpolicy.eval_run) of the current policy, on every rank."""
        from onpolicy.eval_run import evaluate

        t0 = time.perf_counter()
        with torch.no_grad():
            _, summary = evaluate(self.cfg, self.sampler, self.tokenizer, self.eval_rows, self.dist,
                                  rewards=self.rewards)
        keys = [k for k in summary if k not in ("num_problems", "num_samples")]
        return {**{f"eval/{k}": summary[k] for k in keys}, "time/eval": time.perf_counter() - t0}
