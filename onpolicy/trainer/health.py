"""Run health: non-finite values stop the run, a run with no learning signal for several steps gets a warning.

`NonFiniteError` is raised by `update_policy` before the optimizer step when the sampler or trainer logprobs,
the loss or the gradient norm is NaN/inf, built there once with the step's metrics: the bad update is never
applied, so the weights in memory are the last good ones (`train()` saves them and records where). A NaN is
not a parity violation and is reported before the strict on-policy check runs. `CollapseWatch` flags
`COLLAPSE_STEPS` consecutive steps with reward/std == 0 and grad_norm == 0 (e.g. `trainer.lr: 1e3`). Left out:
loss-spike detection, automatic rollback and retry with a lower learning rate.
"""
from __future__ import annotations

import math

import torch

COLLAPSE_STEPS = 3  # consecutive steps without reward variance and gradient before warning


class RunStopped(RuntimeError):
    """A run stopped on purpose (non-finite values, strict on-policy violation): the recipe prints its message
    as one `error:` line and exits 1, without a traceback."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM (after its last good state was saved): the recipe prints its message
    as one line and exits with `exit_code` (130 for Ctrl-C, 143 for SIGTERM), without a traceback."""

    exit_code = 130


class NonFiniteError(RunStopped):
    """A non-finite value (`what`) in RL step `step` (1-based); `metrics`: the step's row as far as it was
    computed; `update`: (k, n) when update k of the step's n failed after updates 1..k-1 were applied; `saved`:
    where the last good policy is (set by train() once it knows). The message is made from these fields."""

    def __init__(self, step: int, what: str, metrics: dict | None = None, update: tuple[int, int] | None = None,
                 saved: str | None = None):
        self.step, self.what, self.metrics, self.update, self.saved = step, what, dict(metrics or {}), update, saved
        super().__init__(what)

    @property
    def subject(self) -> str:
        """`what`, with the failing update when earlier updates of the step were applied."""
        if self.update is None or self.update[0] == 1:
            return self.what
        k, n = self.update
        return f"{self.what} (update {k} of {n}; updates 1-{k - 1} were applied)"

    def __str__(self) -> str:
        where = f"; the last good policy (before step {self.step}) is saved in {self.saved}" if self.saved else ""
        return (f"step {self.step}: {self.subject} non-finite (NaN or inf); the update was not applied{where}. "
                "Lower trainer.lr or trainer.max_grad_norm, or check the rewards and data")


def is_finite(value: torch.Tensor | float) -> bool:
    """Every element of `value` is finite."""
    return math.isfinite(value) if isinstance(value, float) else bool(torch.isfinite(value).all())


class CollapseWatch:
    """`update(metrics)` returns a warning line once per streak of `steps` steps without learning signal."""

    def __init__(self, lr: float, steps: int = COLLAPSE_STEPS):
        self.lr, self.steps, self.streak = lr, steps, 0

    def update(self, m: dict) -> str | None:
        self.streak = self.streak + 1 if no_signal(m) else 0
        if self.streak != self.steps:
            return None
        first, reward = m["step"] - self.steps + 1, m["reward/mean"]
        solved = " or the task is solved" if reward > 0 else ""
        return (f"warning: no learning signal for {self.steps} steps ({first}-{m['step']}): every completion got "
                f"reward {reward:.4g} (reward/std 0.0) and grad_norm is 0.0, "
                f"{m.get('completion/truncated_frac', 0.0):.0%} truncated; the policy may have collapsed "
                f"(is trainer.lr {self.lr:g} too high?){solved}")


def no_signal(m: dict) -> bool:
    """A step whose rewards were all equal and whose gradient was exactly zero."""
    return m.get("reward/std") == 0.0 and m.get("grad_norm") == 0.0


def no_signal_since(history: list[dict], steps: int = COLLAPSE_STEPS) -> int | None:
    """The first step of a trailing streak of at least `steps` no-signal steps, else None."""
    n = 0
    while n < len(history) and no_signal(history[-1 - n]):
        n += 1
    return history[-n]["step"] if n >= steps else None
