"""Clipped policy-gradient loss for GRPO, Dr.GRPO, DAPO and RLOO, splittable into micro-batches.

Per completion token t of completion b with advantage A_b:
    ratio_t = exp(lp_t - old_lp_t)              (old_lp = the sampler's logprobs; on the first update of a
                                                 rollout batch lp == old_lp bitwise, so ratio is exactly 1)
    pg_t    = -min(ratio_t * A_b, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_b)
    kl_t    = exp(ref_t - lp_t) - (ref_t - lp_t) - 1     (k3 to a frozen reference, only when beta > 0)
    loss    = sum_t w_t * (s_t * pg_t + beta * kl_t)     (s_t: optional detached truncated-IS weight)
The aggregation weights w_t come from the WHOLE (mini-)batch and its loss_mask (`loss_weights`), never from
the tokens of one micro-batch:
    "sequence": 1 / (completion b's unmasked tokens * non-empty completions)   (GRPO, RLOO)
    "token":    1 / (unmasked tokens of the batch)                              (DAPO)
    "constant": 1 / (completions * max_tokens)                                  (Dr.GRPO)
Micro-batching: `w = loss_weights(...)` once; for each micro-batch `part = slice_loss(lp, old, w.slice(span))`,
`part.loss.backward()`, `acc.add(part)`; `acc.result()` gives the step's loss and metrics. d loss / d lp_t is
w_t * d(pg_t)/d(lp_t) -- elementwise, so bitwise the same however the tokens are split; the reported loss is one
sum over the concatenated per-token terms, so it is bitwise the unsplit value too. `policy_loss` is the
unsplit call (one slice). Left out: value functions, entropy bonus, dual-clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onpolicy.trainer.reductions import fixed_sum

from onpolicy.algorithms import ALGO_DEFAULTS, LOSS_AGGS
from onpolicy.trainer.parity import OnPolicyViolation

DEFAULT_AGG = {algo: d["loss_agg"] for algo, d in ALGO_DEFAULTS.items()}


def default_loss_agg(algo: str) -> str:
    if algo not in DEFAULT_AGG:
        raise ValueError(f"algo must be one of {', '.join(DEFAULT_AGG)}; got {algo!r}")
    return DEFAULT_AGG[algo]


@dataclass
class LossOutput:
    loss: torch.Tensor          # scalar, differentiable
    pg_loss: float              # aggregated policy-gradient part
    kl_ref: float               # mean k3 to the reference over unmasked tokens (0.0 when beta == 0)
    clip_frac: float            # fraction of unmasked tokens whose ratio was clipped
    ratio_mean: float
    num_tokens: int             # unmasked tokens


def _check_1d(name: str, t: torch.Tensor, n: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != n:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 1-D tensor of length {n} (completion tokens); got {shape}")


@dataclass
class LossWeights:
    """Per-token loss inputs of a whole (mini-)batch, in packed completion-token order."""
    token_adv: torch.Tensor     # [N] advantage of each token's completion
    weights: torch.Tensor       # [N] aggregation weight w_t (0 where masked)
    mask: torch.Tensor          # [N] bool, True = in the loss
    num_tokens: int             # unmasked tokens of the whole batch (the metrics' denominator)

    def slice(self, tokens: range) -> "LossWeights":
        """The weights of packed tokens `tokens` (a contiguous range, e.g. one micro-batch's completions)."""
        n = self.weights.shape[0]
        if tokens.step != 1 or not 0 <= tokens.start <= tokens.stop <= n:
            raise ValueError(f"LossWeights.slice: tokens must be a contiguous range within [0, {n}]; got {tokens}")
        s = slice(tokens.start, tokens.stop)
        return LossWeights(self.token_adv[s], self.weights[s], self.mask[s], self.num_tokens)


def loss_weights(advantages: torch.Tensor, seq_lens, *, agg: str, max_tokens: int | None = None,
                 loss_mask: torch.Tensor | None = None, device=None, dtype=torch.float32) -> LossWeights:
    """Aggregation weights from the whole batch: `seq_lens[b]` completion tokens belong to completion b.

    Computed on the host in float64 (no index_add / bincount on the device: non-deterministic or refused on
    CUDA under deterministic algorithms), then cast once to `dtype` on `device`."""
    seq_lens = torch.as_tensor(seq_lens, dtype=torch.long).cpu()
    total, nseq = (int(seq_lens.sum()) if seq_lens.numel() else 0), seq_lens.numel()
    if agg not in LOSS_AGGS:
        raise ValueError(f"agg (trainer.loss_agg) must be one of {', '.join(LOSS_AGGS)}; got {agg!r}")
    if (seq_lens < 0).any():
        raise ValueError("seq_lens must be >= 0")
    _check_1d("advantages", advantages, nseq)
    if loss_mask is not None:
        _check_1d("loss_mask", loss_mask, total)
    if agg == "constant" and (max_tokens is None or max_tokens < 1):
        raise ValueError(f"agg 'constant' needs max_tokens >= 1; got {max_tokens!r}")
    device = advantages.device if device is None else torch.device(device)
    idx = torch.repeat_interleave(torch.arange(nseq), seq_lens)
    mask = torch.ones(total, dtype=torch.bool) if loss_mask is None else loss_mask.detach().bool().cpu()
    ntok = int(mask.sum())
    if agg == "token":
        w = mask.double() / max(ntok, 1)
    elif agg == "constant":
        w = mask.double() / float(max(nseq, 1) * max_tokens)
    else:
        counts = torch.zeros(nseq, dtype=torch.float64).index_add_(0, idx, mask.double())
        nonempty = max(int((counts > 0).sum()), 1)
        w = mask.double() / counts.clamp(min=1.0)[idx] / nonempty
    adv = advantages.detach().to(device=device, dtype=dtype)[idx.to(device)]
    return LossWeights(adv, w.to(device=device, dtype=dtype), mask.to(device), ntok)


@dataclass
class SliceLoss:
    """`slice_loss` of one slice of tokens: `loss` to backward, detached per-token terms for the metrics."""
    loss: torch.Tensor          # sum of this slice's weighted terms (differentiable)
    terms: torch.Tensor         # [n] w_t * loss_t (detached)
    pg_terms: torch.Tensor      # [n] w_t * s_t * pg_t
    kl: torch.Tensor | None     # [n] k3 (beta > 0) else None
    ratio: torch.Tensor         # [n]
    clipped: torch.Tensor       # [n] bool: ratio clipped, unmasked
    mask: torch.Tensor          # [n] bool
    num_tokens: int             # the whole batch's unmasked tokens


def _check_clip(epsilon_low: float, epsilon_high: float, beta: float, ref_logprobs) -> None:
    if not (0.0 <= epsilon_low < 1.0) or epsilon_high < 0.0:
        raise ValueError(f"epsilon_low must be in [0, 1) and epsilon_high >= 0; got {epsilon_low}, {epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (logprobs of the frozen reference model)")


def _verify_on_policy(ratio: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> None:
    off = ratio.detach() != 1.0
    if bool(off.any()):
        diff = float((logprobs.detach() - old_logprobs).abs().max())
        raise OnPolicyViolation(
            f"first update of a rollout batch: ratio exp(trainer - sampler logprob) must be exactly 1.0 on every "
            f"token, but {int(off.sum())}/{off.numel()} tokens differ (max |logprob diff| {diff:.3e}); sampler and "
            f"trainer logprobs are not bitwise equal (run `python -m scripts.doctor`)")


def slice_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, w: LossWeights, *, epsilon_low: float = 0.2,
               epsilon_high: float = 0.2, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None,
               is_weights: torch.Tensor | None = None, check_on_policy: bool = False) -> SliceLoss:
    """Loss of one slice of tokens with whole-batch weights `w` (already sliced to the same tokens).

    `check_on_policy=True` (the first update of a rollout batch, old = the sampler's logprobs) raises
    OnPolicyViolation unless every ratio is exactly 1.0."""
    n = w.weights.shape[0]
    _check_1d("logprobs", logprobs, n)
    _check_1d("old_logprobs", old_logprobs, n)
    for name, t in (("is_weights", is_weights), ("ref_logprobs", ref_logprobs if beta > 0 else None)):
        if t is not None:
            _check_1d(name, t, n)
    _check_clip(epsilon_low, epsilon_high, beta, ref_logprobs)
    adv = w.token_adv.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    if check_on_policy:
        _verify_on_policy(ratio, logprobs, old_logprobs.detach())
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    pg = -torch.minimum(ratio * adv, clipped * adv)
    if is_weights is not None:
        pg = pg * is_weights.detach().to(pg.dtype)
    per_token, kl = pg, None
    if beta > 0:
        delta = ref_logprobs.detach() - logprobs
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
    weights = w.weights.to(logprobs.dtype)
    terms = per_token * weights
    loss = fixed_sum(terms)  # one fixed order: the same bits for any thread count (and micro-batch split)
    with torch.no_grad():
        was_clipped = ((ratio < 1.0 - epsilon_low) & (adv < 0)) | ((ratio > 1.0 + epsilon_high) & (adv > 0))
        return SliceLoss(loss=loss, terms=terms.detach(), pg_terms=(pg * weights).detach(),
                         kl=None if kl is None else kl.detach(), ratio=ratio.detach(),
                         clipped=was_clipped & w.mask, mask=w.mask, num_tokens=w.num_tokens)


@dataclass
class LossStats:
    loss: float
    pg_loss: float
    kl_ref: float
    clip_frac: float
    ratio_mean: float
    num_tokens: int


class LossAccumulator:
    """Collects the `SliceLoss` of each micro-batch of one (mini-)batch, in token order; `result()` reduces the
    concatenated per-token terms in one order, so it equals the unsplit batch's bitwise."""

    def __init__(self):
        self.parts: list[SliceLoss] = []

    def add(self, part: SliceLoss) -> None:
        self.parts.append(part)

    def result(self) -> LossStats:
        if not self.parts:
            raise ValueError("LossAccumulator.result: no slices were added")
        return _reduce(self.parts)


def _reduce(parts: list[SliceLoss]) -> LossStats:
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    mask = cat("mask")
    maskf = mask.to(parts[0].ratio.dtype)
    ntok = parts[0].num_tokens
    denom = max(ntok, 1)
    kl = 0.0 if parts[0].kl is None else (fixed_sum(cat("kl") * maskf) / denom).item()
    return LossStats(loss=fixed_sum(cat("terms")).item(), pg_loss=fixed_sum(cat("pg_terms")).item(), kl_ref=kl,
                     clip_frac=(cat("clipped").sum() / denom).item(),
                     ratio_mean=(fixed_sum(cat("ratio") * maskf) / denom).item(), num_tokens=ntok)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, seq_lens, *,
                epsilon_low: float = 0.2, epsilon_high: float = 0.2, agg: str = "sequence",
                max_tokens: int | None = None, loss_mask: torch.Tensor | None = None, beta: float = 0.0,
                ref_logprobs: torch.Tensor | None = None, is_weights: torch.Tensor | None = None,
                check_on_policy: bool = False) -> LossOutput:
    """Unsplit loss over packed tokens: `loss_weights` + one `slice_loss` over all of them."""
    w = loss_weights(advantages, seq_lens, agg=agg, max_tokens=max_tokens, loss_mask=loss_mask,
                     device=logprobs.device, dtype=logprobs.dtype)
    part = slice_loss(logprobs, old_logprobs, w, epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta,
                      ref_logprobs=ref_logprobs, is_weights=is_weights, check_on_policy=check_on_policy)
    s = _reduce([part])
    return LossOutput(loss=part.loss, pg_loss=s.pg_loss, kl_ref=s.kl_ref, clip_frac=s.clip_frac,
                      ratio_mean=s.ratio_mean, num_tokens=s.num_tokens)


def truncated_is_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Detached min(exp(trainer_lp - sampler_lp), cap): corrects for sampler/trainer mismatch (TRL/verl TIS)."""
    if cap is None or cap <= 0:
        raise ValueError(f"tis_cap must be a float > 0; got {cap!r}")
    return torch.exp(trainer_logprobs.detach() - sampler_logprobs.detach()).clamp(max=cap)
