"""Group advantages for GRPO-family algorithms (one group = the G completions of one prompt).

Rewards come as a flat [N * G] tensor ordered prompt-major (prompt 0's G samples first) or as [N, G].
  grpo / dapo: (r - mean_group) / (std_group + eps)   (std unbiased, as TRL; a zero-variance group gives 0)
  dr_grpo:     r - mean_group                          (no std normalisation, Dr.GRPO)
  rloo:        r - mean of the *other* G-1 rewards     (leave-one-out baseline; needs G >= 2)
Left out: whitening across the whole batch, reward clipping, per-token (process) rewards.
"""
from __future__ import annotations

import torch

from onpolicy.algorithms import ALGOS


def _as_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.dim() == 2:
        if rewards.shape[1] != group_size:
            raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected [num_prompts, {group_size}]")
        return rewards.float()
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size} (or [N, G]); "
            f"got shape {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, algo: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """Per-completion advantages, flat [N * G] fp32, same order as `rewards`."""
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {', '.join(ALGOS)}; got {algo!r}")
    r = _as_groups(rewards, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if algo in ("grpo", "dapo"):
        std = r.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
        adv = (r - mean) / (std + eps)
    elif algo == "dr_grpo":
        adv = r - mean
    else:  # rloo
        if group_size < 2:
            raise ValueError("algo 'rloo' needs num_generations (group_size) >= 2 for a leave-one-out baseline")
        baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
        adv = r - baseline
    return adv.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool [N]: True for groups whose G rewards are all equal (no learning signal; DAPO drops them)."""
    r = _as_groups(rewards, group_size)
    return (r == r[:, :1]).all(dim=1)


def group_reward_stats(rewards: torch.Tensor, group_size: int) -> dict:
    """Batch reward mean/std/min/max and the fraction of groups with zero variance (for logging)."""
    r = _as_groups(rewards, group_size)
    flat = r.reshape(-1)
    std = flat.std(unbiased=False).item() if flat.numel() > 1 else 0.0
    return {
        "reward/mean": flat.mean().item(),
        "reward/std": std,
        "reward/zero_std_frac": zero_variance_groups(r, group_size).float().mean().item(),
        "reward/min": flat.min().item(),
        "reward/max": flat.max().item(),
    }
