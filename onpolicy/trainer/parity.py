"""Sampler-vs-trainer logprob parity: the metrics that prove (or disprove) true on-policy training.

For every completion token, diff = sampler_lp - trainer_lp (the trainer recomputes with the same weights).
    onpolicy/kl                 mean over tokens of k1 = diff
    onpolicy/logprob_diff/max   max |diff|
    onpolicy/logprob_diff/mean  mean |diff|
    onpolicy/mismatch_frac      fraction of tokens whose two logprobs are not bitwise equal
All four are exactly 0.0 in invariant mode. MoE models add `onpolicy/routing_mismatch` (the fraction of tokens
whose experts differ between the sampler's and the trainer's mode; `onpolicy.model.routing`), also 0.0.
Left out: per-position histograms (see scripts/doctor.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onpolicy.trainer.health import RunStopped

PARITY_KEYS = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")


def _pairs(sampler, trainer):
    if len(sampler) != len(trainer):
        raise ValueError(f"sampler_logprobs has {len(sampler)} sequences, trainer_logprobs has {len(trainer)}")
    for i, (s, t) in enumerate(zip(sampler, trainer)):
        if s.shape != t.shape:
            raise ValueError(f"sequence {i}: sampler logprobs shape {tuple(s.shape)} != trainer {tuple(t.shape)}")
        yield i, s.detach().float().cpu(), t.detach().float().cpu()


def parity_metrics(sampler_logprobs: list[torch.Tensor], trainer_logprobs: list[torch.Tensor]) -> dict:
    """The four `onpolicy/*` metrics over all tokens of all sequences (0.0 each for an empty batch)."""
    pairs = list(_pairs(sampler_logprobs, trainer_logprobs))
    if not pairs or sum(s.numel() for _, s, _ in pairs) == 0:
        return {k: 0.0 for k in PARITY_KEYS}
    s = torch.cat([p[1] for p in pairs])
    t = torch.cat([p[2] for p in pairs])
    diff = (s - t).double()
    # NaN/inf logprobs on either side count as mismatches and make the float metrics non-finite.
    return {
        "onpolicy/kl": diff.mean().item(),
        "onpolicy/logprob_diff/max": diff.abs().max().item(),
        "onpolicy/logprob_diff/mean": diff.abs().mean().item(),
        "onpolicy/mismatch_frac": (s != t).double().mean().item(),
    }


@dataclass
class Mismatch:
    sequence: int
    token: int
    sampler_logprob: float
    trainer_logprob: float
    num_mismatched: int
    num_tokens: int


def first_mismatch(sampler_logprobs: list[torch.Tensor], trainer_logprobs: list[torch.Tensor]) -> Mismatch | None:
    """The first (sequence, token) whose logprobs differ bitwise, with the totals; None when all equal."""
    first, count, total = None, 0, 0
    for i, s, t in _pairs(sampler_logprobs, trainer_logprobs):
        total += s.numel()
        bad = (s != t).nonzero().flatten()
        count += bad.numel()
        if first is None and bad.numel():
            j = int(bad[0])
            first = (i, j, float(s[j]), float(t[j]))
    if first is None:
        return None
    return Mismatch(*first, num_mismatched=count, num_tokens=total)


class OnPolicyViolation(RunStopped):
    """Raised under `strict_onpolicy: true` when sampler and trainer logprobs differ."""


def mismatch_report(m: Mismatch, step: int, context: str = "") -> str:
    return (
        f"strict_onpolicy: sampler and trainer logprobs differ at step {step}: sequence {m.sequence}, "
        f"completion token {m.token}: sampler {m.sampler_logprob!r} vs trainer {m.trainer_logprob!r} "
        f"(diff {m.sampler_logprob - m.trainer_logprob:.3e}); {m.num_mismatched}/{m.num_tokens} tokens differ. "
        f"{context}Run `python -m scripts.doctor` to find which op breaks batch invariance on this machine.")
