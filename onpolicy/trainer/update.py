"""`update_policy(run, scored, step)`: the trainer half of one RL step -- one gradient update on a ScoredBatch.

Trainer forward (`sequence_logprobs`, packed varlen, autograd) -> parity metrics vs the sampler's logprobs
(`strict_onpolicy` stops on the first bitwise mismatch) -> clipped policy loss -> backward, grad clip, AdamW
step -> the engine's prefix cache is reset (its cached KV came from the old weights). The PPO ratio uses the
sampler's logprobs as "old" in invariant mode (ratio == 1 exactly); with `invariant: false` it uses the
trainer's own detached logprobs (one update per batch, as TRL) and `tis_cap` adds the truncated importance
weight min(exp(trainer - sampler), cap). Non-finite logprobs, loss or gradient norm raise `NonFiniteError`
before the optimizer step (and before the strict parity check: a NaN is not a parity violation).
The kernels' invariant mode is the caller's (`train()` enters it once).
This is the seam for what comes next: micro-batches (token budget, gradient accumulation with whole-batch
normalisers), several mini-batch updates per rollout batch, and the cross-rank gradient reduction all belong
here. Left out today: all three -- one forward/backward over the whole batch, one optimizer step.
"""
from __future__ import annotations

import torch

from onpolicy.trainer.health import check_finite
from onpolicy.trainer.losses import policy_loss, truncated_is_weights
from onpolicy.trainer.parity import OnPolicyViolation, first_mismatch, mismatch_report, parity_metrics
from onpolicy.trainer.scoring import ScoredBatch


def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup over `warmup_steps` (step is 0-based), then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def trainer_logprobs(model, ro, temperature: float, grad: bool) -> list[torch.Tensor]:
    """Per-completion logprobs of `ro`'s tokens under `model` (same kernels as the sampler)."""
    from onpolicy.model import sequence_logprobs

    with torch.set_grad_enabled(grad):
        return sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, temperature=temperature)


def _check_parity(run, ro, sampler_lp, lp, trainer_lps, step: int, metrics: dict) -> None:
    """Non-finite logprobs first (NonFiniteError), then the strict bitwise check (OnPolicyViolation)."""
    check_finite(step + 1, "sampler logprobs", sampler_lp, metrics)
    check_finite(step + 1, "trainer logprobs", lp.detach(), metrics)
    if run.cfg.trainer.strict_onpolicy:
        mm = first_mismatch(ro.sampler_logprobs, trainer_lps)
        if mm is not None:
            raise OnPolicyViolation(mismatch_report(mm, step + 1, f"prompt {ro.prompt_ids[mm.sequence]!r}; "))


def _loss(run, scored: ScoredBatch, lp, sampler_lp):
    t, s, device = run.cfg.trainer, run.cfg.sampling, run.device
    ro = scored.rollout
    old = sampler_lp if t.invariant else lp.detach()
    ref_lp = None
    if t.beta > 0:
        ref_lp = torch.cat(trainer_logprobs(run.ref_model, ro, s.temperature, grad=False))
    is_w = truncated_is_weights(lp, sampler_lp, t.tis_cap) if t.tis_cap is not None else None
    return policy_loss(lp, old, scored.advantages.to(device), ro.seq_lens, epsilon_low=t.epsilon_low,
                       epsilon_high=t.epsilon_high, agg=t.loss_agg, max_tokens=s.max_tokens,
                       loss_mask=scored.loss_mask.to(device), beta=t.beta, ref_logprobs=ref_lp, is_weights=is_w)


def update_policy(run, scored: ScoredBatch, step: int) -> dict:
    """One optimizer step of `run.model` on `scored` (0-based `step`); returns parity, loss and optimizer
    metrics. Raises OnPolicyViolation (strict mode) or NonFiniteError; then no weight has changed."""
    t = run.cfg.trainer
    ro = scored.rollout
    run.model.train()
    trainer_lps = trainer_logprobs(run.model, ro, run.cfg.sampling.temperature, grad=True)
    metrics = parity_metrics(ro.sampler_logprobs, trainer_lps)
    lp = torch.cat(trainer_lps)
    sampler_lp = torch.cat(ro.sampler_logprobs).to(run.device)
    _check_parity(run, ro, sampler_lp, lp, trainer_lps, step, metrics)
    out = _loss(run, scored, lp, sampler_lp)
    lr = learning_rate(step, t.lr, t.warmup_steps)
    metrics.update({"loss": out.loss.item(), "lr": lr, "loss/clip_frac": out.clip_frac,
                    "loss/ratio_mean": out.ratio_mean, "loss/kl_ref": out.kl_ref})
    check_finite(step + 1, "loss", metrics["loss"], metrics)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm).item()
    metrics["grad_norm"] = grad_norm
    try:
        check_finite(step + 1, "gradient norm", grad_norm, metrics)
        run.optimizer.step()
    finally:
        run.optimizer.zero_grad(set_to_none=True)
    run.llm.reset_prefix_cache()
    return metrics
