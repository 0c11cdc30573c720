"""`update_policy(parts, scored, step)`: the trainer half of one RL step -- the optimizer updates of a ScoredBatch.

    for upd in update_schedule(...):          # trainer.num_iterations passes x trainer.mini_batches (whole groups)
        w = loss_weights(mini-batch)          # normalisers of the whole mini-batch, never of a micro-batch
        for each micro-batch (trainer.micro_batch_tokens of prompt + completion; null = the whole mini-batch):
            trainer forward (packed varlen; trainer.activation_checkpointing) -> logprobs
            update 1 only: parity vs the sampler (strict_onpolicy: bitwise, and the loss checks ratio == 1.0)
            loss_fn (slice_loss) -> backward -> optimizer.accumulate_grads()    (fp32 master grads)
        (micro-batches planned within this rank's reduction chunks; the parallel strategy's GradReduction sums
         the chunks; under FSDP2 FSDP reduce-scatters each backward and ranks with fewer micro-batches run idle ones)
        clip -> MasterWeightAdamW step (fp32 masters; the model's bf16 copy, shared with the engine, refreshed)
    engine prefix cache reset (its cached KV came from the old weights)

Old policy: the sampler's logprobs. On update 1 in invariant mode they equal the trainer's bitwise (ratio 1.0);
later updates clip for real. With `invariant: false` and one update per batch the trainer's own detached
logprobs are the old policy (as TRL); with several updates the sampler's (as verl's rollout-logprob mode;
`tis_cap` corrects the mismatch). Parity metrics cover update 1's sequences (the first mini-batch): after it the
weights are no longer the sampler's. Non-finite logprobs, loss or gradient norm raise `NonFiniteError` before
that update's optimizer step; when earlier updates of the step were applied (`e.update`: (k, n) with k > 1),
`train()` saves nothing and points at the last checkpoint instead. Metrics: loss, grad_norm, loss/* are means
over the updates; with several updates also `train/updates`, `loss/clip_frac_last` and `loss/ratio_mean_last`.
Left out: shuffling between iterations, micro-batch-size-independent weight
gradients (fixed-order chunked reduction): they differ by fp32 rounding (tiny default: relative L2 ~1.5e-7
between 1-sequence micro-batches and one batch; ~3.5e-3 with a bf16 model, whose per-micro-batch weight grads
are rounded to bf16 before the fp32 sum).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch

from onpolicy.model.moe import router_aux_loss
from onpolicy.model.routing import mode_routes_differ, routing_metrics
from onpolicy.trainer.distributed import GradReduction, gather_parity
from onpolicy.trainer.health import NonFiniteError, is_finite
from onpolicy.trainer.losses import LossAccumulator, loss_weights, slice_loss, truncated_is_weights
from onpolicy.trainer.microbatch import plan_micro_batches, token_spans, update_schedule
from onpolicy.trainer.parity import OnPolicyViolation, first_mismatch, mismatch_report, parity_metrics
from onpolicy.trainer.rollout import Rollout, sub_rollout
from onpolicy.trainer.scoring import ScoredBatch

if TYPE_CHECKING:
    from onpolicy.config import ExperimentConfig
    from onpolicy.trainer.fsdp import ShardedAdamW
    from onpolicy.trainer.parallel import ParallelStrategy
    from onpolicy.trainer.precision import MasterWeightAdamW


def trainer_logprobs(model, ro, temperature: float, grad: bool) -> list[torch.Tensor]:
    """Per-completion logprobs of `ro`'s policy tokens (`Rollout.loss_mask`) under `model` (same kernels as the
    sampler)."""
    from onpolicy.model import sequence_logprobs

    with torch.set_grad_enabled(grad):
        return sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, temperature=temperature,
                                 score_masks=ro.score_masks)


@dataclass(frozen=True)
class UpdateParts:
    """What the optimizer updates act on. `model`: the engine's model (its weights refreshed by the optimizer's
    step); `module`: the module the trainer's forward runs (`strategy.train_module(model)`); `loss_fn`: the
    per-micro-batch loss (`losses.slice_loss`'s signature); `logprobs_fn`: the trainer's per-completion logprobs
    (`trainer_logprobs`'s signature; the policy's and the reference's); `ref_model`: the frozen reference of
    trainer.beta."""
    cfg: ExperimentConfig
    device: torch.device
    model: torch.nn.Module
    module: torch.nn.Module
    optimizer: MasterWeightAdamW | ShardedAdamW
    strategy: ParallelStrategy
    loss_fn: Callable = slice_loss
    logprobs_fn: Callable = trainer_logprobs
    ref_model: torch.nn.Module | None = None


def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup over `warmup_steps` (step is 0-based), then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


class _FiniteChecks:
    """The step's non-finite checks: the NonFiniteError is built here, once, with the step's metrics so far
    (`metrics`, then the rewards and completion metrics of `scored`) and the failing update."""

    def __init__(self, step: int, scored: ScoredBatch, n_updates: int):
        self.step, self.scored, self.n_updates = step, scored, n_updates

    def check(self, what: str, value, metrics: dict, update_index: int) -> None:
        if not is_finite(value):
            row = {"step": self.step + 1, **metrics, **self.scored.metrics(), **self.scored.completion_metrics()}
            raise NonFiniteError(self.step + 1, what, row, update=(update_index + 1, self.n_updates))


class _FirstUpdate:
    """Update 1's trainer logprobs (detached) for the parity metrics, and its per-micro-batch checks."""

    def __init__(self, step: int, strict: bool, finite: _FiniteChecks):
        self.step, self.strict, self.finite, self.sampler, self.trainer = step, strict, finite, [], []

    def check(self, mb: Rollout, offset: int, sampler_lp, lps: list[torch.Tensor]) -> None:
        """Non-finite logprobs first (NonFiniteError, with the parity metrics so far), then strict_onpolicy."""
        self.sampler += mb.sampler_logprobs
        self.trainer += [x.detach() for x in lps]
        for what, v in (("sampler logprobs", sampler_lp), ("trainer logprobs", torch.cat(lps).detach())):
            if not is_finite(v):
                self.finite.check(what, v, self.metrics(), 0)
        if self.strict:
            mm = first_mismatch(mb.sampler_logprobs, lps)
            if mm is not None:
                prompt = mb.prompt_ids[mm.sequence]
                mm = replace(mm, sequence=mm.sequence + offset)  # index in the step's rollout order
                raise OnPolicyViolation(mismatch_report(mm, self.step + 1, f"prompt {prompt!r}; "))

    def metrics(self) -> dict:
        return parity_metrics(self.sampler, self.trainer)


def _micro_loss(parts: UpdateParts, mb: Rollout, lps, w, *, old_is_sampler: bool, on_policy: bool):
    """The loss of one micro-batch (old policy, reference KL and truncated IS per the config)."""
    t = parts.cfg.trainer
    lp = torch.cat(lps)
    sampler_lp = torch.cat(mb.sampler_logprobs).to(parts.device)
    old = sampler_lp if old_is_sampler else lp.detach()
    ref_lp = None
    if t.beta > 0:
        ref_lp = torch.cat(parts.logprobs_fn(parts.ref_model, mb, parts.cfg.sampling.temperature, grad=False))
    is_w = truncated_is_weights(lp, sampler_lp, t.tis_cap) if t.tis_cap is not None else None
    return parts.loss_fn(lp, old, w, epsilon_low=t.epsilon_low, epsilon_high=t.epsilon_high, beta=t.beta,
                         ref_logprobs=ref_lp, is_weights=is_w,
                         check_on_policy=on_policy and t.invariant and t.strict_onpolicy)


def _mini_batch_weights(parts: UpdateParts, scored: ScoredBatch, seqs: range, span: range):
    t, s, device = parts.cfg.trainer, parts.cfg.sampling, parts.device
    lens = scored.rollout.seq_lens[seqs.start:seqs.stop]
    return loss_weights(scored.advantages[seqs.start:seqs.stop].to(device), lens, agg=t.loss_agg,
                        max_tokens=s.max_tokens, loss_mask=scored.loss_mask[span.start:span.stop].to(device))


def _one_update(parts: UpdateParts, scored: ScoredBatch, upd, n_updates: int, first: _FirstUpdate,
                metrics: dict) -> dict:
    """Forward/backward of every micro-batch of update `upd`, clip and optimizer step; -> its loss stats."""
    t, ro, optimizer = parts.cfg.trainer, scored.rollout, parts.optimizer
    mini = sub_rollout(ro, upd.seqs)
    w = _mini_batch_weights(parts, scored, upd.seqs, token_spans(ro.seq_lens, [upd.seqs])[0])
    seq_tokens = [len(p) + len(c) for p, c in zip(mini.prompt_ids, mini.completion_ids)]
    # this rank's chunks; cross-rank grad sum
    reduction = parts.strategy.grad_reduction(parts.cfg, optimizer, parts.device, len(seq_tokens))
    acc = LossAccumulator()
    plan = list(_chunk_micro_batches(reduction.my_chunks(), seq_tokens, mini.seq_lens, t.micro_batch_tokens))
    for seqs, span, chunk_end in plan:
        mb = sub_rollout(mini, seqs)
        with router_aux_loss(parts.module, enabled=parts.cfg.model.router_aux_loss_coef > 0) as aux:  # MoE only
            lps = parts.logprobs_fn(parts.module, mb, parts.cfg.sampling.temperature, grad=True)
        if upd.on_policy:
            first.check(mb, upd.seqs.start + seqs.start, torch.cat(mb.sampler_logprobs), lps)
        else:
            first.finite.check("trainer logprobs", torch.cat(lps).detach(), metrics, upd.index)
        part = _micro_loss(parts, mb, lps, w.slice(span), on_policy=upd.on_policy,
                           old_is_sampler=t.invariant or n_updates > 1)
        first.finite.check("loss", part.loss.detach(), {**metrics, **_parity(first, upd)}, upd.index)
        share = sum(seq_tokens[seqs.start:seqs.stop]) / sum(seq_tokens)  # this micro-batch's part of the mean
        coef = parts.cfg.model.router_aux_loss_coef
        (part.loss if aux is None else part.loss + coef * share * aux.loss()).backward()
        optimizer.accumulate_grads()
        acc.add(part)
        del lps, part
        if chunk_end:
            reduction.chunk_done()
    parts.strategy.pad_micro_batches(parts.module, len(plan), lambda: _most_micro_batches(
        reduction, seq_tokens, mini.seq_lens, t.micro_batch_tokens))
    reduction.finish()
    acc.parts = reduction.loss_parts(acc.parts)
    stats = acc.result()
    grad_norm = optimizer.clip_grad_norm_(t.max_grad_norm)
    first.finite.check("gradient norm", grad_norm, {**metrics, **_parity(first, upd), "grad_norm": grad_norm},
                       upd.index)
    optimizer.step()
    optimizer.zero_grad()
    return {"loss": stats.loss, "loss/clip_frac": stats.clip_frac, "loss/ratio_mean": stats.ratio_mean,
            "loss/kl_ref": stats.kl_ref, "grad_norm": grad_norm}


def _chunk_micro_batches(chunks: list[range], seq_tokens: list[int], seq_lens: list[int], budget):
    """(sequences, token span, last of its chunk) of each micro-batch, planned within each chunk (so the plan
    does not depend on the world size); ranges are relative to the mini-batch."""
    for chunk in chunks:
        plan = [range(chunk.start + r.start, chunk.start + r.stop)
                for r in plan_micro_batches(seq_tokens[chunk.start:chunk.stop], budget)]
        for i, (seqs, span) in enumerate(zip(plan, token_spans(seq_lens, plan))):
            yield seqs, span, i == len(plan) - 1


def _most_micro_batches(reduction: GradReduction, seq_tokens: list[int], seq_lens: list[int], budget) -> int:
    """The largest number of micro-batches any rank plans for this mini-batch (every rank can compute it)."""
    return max(len(list(_chunk_micro_batches(reduction.my_chunks(r), seq_tokens, seq_lens, budget)))
               for r in range(reduction.dist.world_size))


def _parity(first: _FirstUpdate, upd) -> dict:
    return first.metrics() if upd.on_policy else {}


def _mean(values: list[float]) -> float:
    return values[0] if len(values) == 1 else sum(values) / len(values)


def update_policy(parts: UpdateParts, scored: ScoredBatch, step: int) -> dict:
    """Every optimizer update of `parts.model` on `scored` (0-based `step`); returns parity, loss and optimizer
    metrics. Raises OnPolicyViolation (strict mode) or NonFiniteError before the failing update's step. The
    caller resets the engine's prefix cache afterwards (its cached KV came from the old weights)."""
    t = parts.cfg.trainer
    ro = scored.rollout
    parts.model.train()
    parts.module.train()
    lr = learning_rate(step, t.lr, t.warmup_steps)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    schedule = update_schedule(len(ro.seq_lens), t.mini_batches, t.num_iterations)
    first = _FirstUpdate(step, t.strict_onpolicy, _FiniteChecks(step, scored, len(schedule)))
    # MoE models: the tokens whose experts differ between the sampler's and the trainer's mode under the
    # rollout's weights (None for dense models), gathered across ranks with the other parity metrics. Re-run on
    # the engine's copy: its bits are those FSDP2 gathers, and it runs no collectives (ranks' counts differ)
    routes = mode_routes_differ(parts.model, ro.prompt_ids, ro.completion_ids)
    per_update, metrics = [], {} if routes is None else routing_metrics(routes)
    try:
        for upd in schedule:
            per_update.append(_one_update(parts, scored, upd, len(schedule), first, metrics))
            if upd.on_policy:
                metrics.update(gather_parity(parts.strategy.dist, first.sampler, first.trainer, routes))
    finally:
        parts.optimizer.zero_grad()
    metrics.update({"loss": _mean([u["loss"] for u in per_update]), "lr": lr})
    for key in ("loss/clip_frac", "loss/ratio_mean", "loss/kl_ref", "grad_norm"):
        metrics[key] = _mean([u[key] for u in per_update])
    if len(per_update) > 1:
        metrics.update({"train/updates": len(per_update), "loss/clip_frac_last": per_update[-1]["loss/clip_frac"],
                        "loss/ratio_mean_last": per_update[-1]["loss/ratio_mean"]})
    return metrics
