"""Clipped policy-gradient loss for GRPO, Dr.GRPO, DAPO and RLOO on packed (concatenated) completion tokens.

Per token t of completion b with advantage A_b:
    ratio_t = exp(lp_t - old_lp_t)              (old_lp = the sampler's logprobs; == lp bitwise in invariant
                                                 mode, so ratio is exactly 1 but d ratio/d theta = d lp/d theta)
    pg_t    = -min(ratio_t * A_b, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_b)
    kl_t    = exp(ref_t - lp_t) - (ref_t - lp_t) - 1     (k3 to a frozen reference, only when beta > 0)
    loss_t  = w_t * pg_t + beta * kl_t          (w_t: optional detached truncated-IS weight, else 1)
Aggregation over tokens with loss_mask (overlong filtering masks whole completions):
    "sequence": mean over each completion's tokens, then mean over completions (GRPO, RLOO)
    "token":    sum over all tokens / number of tokens (DAPO)
    "constant": sum over all tokens / (num completions * max_tokens) (Dr.GRPO's constant normaliser)
Left out: multiple PPO epochs per batch (one update per batch is the on-policy setting), value functions,
entropy bonus, dual-clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onpolicy.trainer.algorithms import ALGO_DEFAULTS, LOSS_AGGS

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
        raise ValueError(f"{name} must be a 1-D tensor of length {n} (total completion tokens); got {shape}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    seq_lens,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    agg: str = "sequence",
    max_tokens: int | None = None,
    loss_mask: torch.Tensor | None = None,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
) -> LossOutput:
    """Loss over packed tokens. `seq_lens[b]` tokens of `logprobs` belong to completion b (in order)."""
    seq_lens = torch.as_tensor(seq_lens, dtype=torch.long).cpu()  # bookkeeping on the host: no device syncs
    total = int(seq_lens.sum()) if seq_lens.numel() else 0
    nseq = seq_lens.numel()
    if agg not in LOSS_AGGS:
        raise ValueError(f"agg (trainer.loss_agg) must be one of {', '.join(LOSS_AGGS)}; got {agg!r}")
    if (seq_lens < 0).any():
        raise ValueError("seq_lens must be >= 0")
    _check_1d("logprobs", logprobs, total)
    _check_1d("old_logprobs", old_logprobs, total)
    _check_1d("advantages", advantages, nseq)
    if loss_mask is not None:
        _check_1d("loss_mask", loss_mask, total)
    if is_weights is not None:
        _check_1d("is_weights", is_weights, total)
    if not (0.0 <= epsilon_low < 1.0) or epsilon_high < 0.0:
        raise ValueError(f"epsilon_low must be in [0, 1) and epsilon_high >= 0; got {epsilon_low}, {epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (logprobs of the frozen reference model)")
    if beta > 0:
        _check_1d("ref_logprobs", ref_logprobs, total)
    if agg == "constant" and (max_tokens is None or max_tokens < 1):
        raise ValueError(f"agg 'constant' needs max_tokens >= 1; got {max_tokens!r}")

    idx_cpu = torch.repeat_interleave(torch.arange(nseq), seq_lens)
    seq_idx = idx_cpu.to(logprobs.device)
    adv = advantages.to(logprobs.dtype)[seq_idx]
    mask = torch.ones(total, dtype=torch.bool, device=logprobs.device) if loss_mask is None else loss_mask.bool()
    maskf = mask.to(logprobs.dtype)

    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    pg = -torch.minimum(ratio * adv, clipped * adv)
    if is_weights is not None:
        pg = pg * is_weights.detach().to(pg.dtype)
    per_token = pg
    kl = None
    if beta > 0:
        delta = ref_logprobs.detach() - logprobs
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl

    # Per-token aggregation weights, computed on the CPU (no index_add / bincount on the device: both are
    # non-deterministic or refused on CUDA under torch.use_deterministic_algorithms).
    mask_cpu = mask.detach().cpu()
    if agg == "token":
        weights = mask_cpu.double() / max(int(mask_cpu.sum()), 1)
    elif agg == "constant":
        weights = mask_cpu.double() / float(max(nseq, 1) * max_tokens)
    else:
        counts = torch.zeros(nseq, dtype=torch.float64).index_add_(0, idx_cpu, mask_cpu.double())
        nonempty = max(int((counts > 0).sum()), 1)
        weights = mask_cpu.double() / counts.clamp(min=1.0)[idx_cpu] / nonempty
    weights = weights.to(device=logprobs.device, dtype=logprobs.dtype)

    def aggregate(values: torch.Tensor) -> torch.Tensor:
        return (values * weights).sum()

    loss = aggregate(per_token)
    ntok = int(mask_cpu.sum())
    with torch.no_grad():
        was_clipped = ((ratio < 1.0 - epsilon_low) & (adv < 0)) | ((ratio > 1.0 + epsilon_high) & (adv > 0))
        denom = max(ntok, 1)
        return LossOutput(
            loss=loss,
            pg_loss=aggregate(pg).item(),
            kl_ref=((kl * maskf).sum() / denom).item() if kl is not None else 0.0,
            clip_frac=((was_clipped & mask).sum() / denom).item(),
            ratio_mean=((ratio * maskf).sum() / denom).item(),
            num_tokens=ntok,
        )


def truncated_is_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Detached min(exp(trainer_lp - sampler_lp), cap): corrects for sampler/trainer mismatch (TRL/verl TIS)."""
    if cap is None or cap <= 0:
        raise ValueError(f"tis_cap must be a float > 0; got {cap!r}")
    return torch.exp(trainer_logprobs.detach() - sampler_logprobs.detach()).clamp(max=cap)
