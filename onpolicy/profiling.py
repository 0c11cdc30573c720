"""Profiler scopes of the trainer's phases: `with phase("forward"): ...` marks a region for torch.profiler.

A scope is a `torch.profiler.record_function` named `PREFIX + name` (a few microseconds when no profiler
runs; placed only at coarse points: once per micro-batch or per optimizer step, once per decoder layer's
recompute). scripts/profile_trainer.py charges each kernel to the innermost scope open when it was launched.
Left out: scopes inside the engine (scripts/profile_engine.py times its calls instead).
"""
from __future__ import annotations

from torch.profiler import record_function

PREFIX = "onpolicy/"
PHASES = ("forward", "logprobs", "loss", "backward", "recompute", "optimizer", "weight_copy")


def phase(name: str) -> record_function:
    """A profiler scope for one of `PHASES`."""
    if name not in PHASES:
        raise ValueError(f"phase: got {name!r}; allowed: {', '.join(PHASES)}")
    return record_function(PREFIX + name)
