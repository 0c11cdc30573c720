"""Rollout -> ScoredBatch: rewards, group advantages and the per-token loss mask of one step.

This is the generation-side half of a step (the engine output is `onpolicy.trainer.rollout.Rollout`); nothing
here touches the trainer's weights. DAPO's dynamic sampling masks the tokens of zero-variance groups out of the
loss (their advantage is 0 anyway; the mask changes the token normaliser) rather than resampling; overlong
filtering masks completions cut off by `max_tokens`. Rewards (or advantages) that overflow float32 are an error
naming the reward, before any update. Left out: resampling to refill dropped groups, per-token
(process) rewards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from onpolicy.trainer.advantages import group_advantages, group_reward_stats, zero_variance_groups
from onpolicy.trainer.rollout import Rollout


@dataclass
class ScoredBatch:
    """One step's rollouts with everything the update needs besides the trainer's own forward."""

    rollout: Rollout
    rewards: torch.Tensor          # [N*G] fp32, CPU
    advantages: torch.Tensor       # [N*G] fp32, CPU
    loss_mask: torch.Tensor        # [total completion tokens] bool, CPU
    truncated: torch.Tensor        # [N*G] bool: finish_reason == "length"
    kept_groups: int               # groups left in the loss after dynamic sampling
    reward_by_name: dict           # reward label -> per-completion values (None: the reward does not apply)

    def metrics(self) -> dict:
        """reward/* of the weighted total, and reward/<label>/mean and /std of each reward (over the completions
        it applies to; left out when it applies to none) -- unweighted, as the reward function returned them."""
        ro = self.rollout
        out = group_reward_stats(self.rewards, ro.group_size)
        for label, vals in self.reward_by_name.items():
            given = [v for v in vals if v is not None]
            if given:
                mean = sum(given) / len(given)
                out[f"reward/{label}/mean"] = mean
                out[f"reward/{label}/std"] = math.sqrt(sum((v - mean) ** 2 for v in given) / len(given))
        return out

    def completion_metrics(self) -> dict:
        ro = self.rollout
        return {"completion/mean_length": ro.num_tokens / max(len(ro.seq_lens), 1),
                "completion/truncated_frac": self.truncated.float().mean().item(),
                "dapo/kept_groups": self.kept_groups}


@dataclass(frozen=True)
class RewardState:
    """`trainer_state` as reward functions receive it (the fields of TRL's TrainerState that apply here)."""

    global_step: int   # RL steps completed before this one
    max_steps: int     # trainer.steps


_NOT_COLUMNS = ("completion", "completion_ids", "trainer_state")  # keyword arguments of their own


def _overflow_message(rewards: list, per_name: dict) -> str:
    """Names the reward with the largest weighted magnitude (the one that overflowed float32)."""
    weight = {r.label: r.weight for r in rewards}

    def largest(item):
        return max((abs(weight[item[0]] * v) for v in item[1] if v is not None), default=0.0)

    name, values = max(per_name.items(), key=largest)
    worst = max((v for v in values if v is not None), key=abs)
    return (f"reward {name!r} returned {worst:g} (weight {weight[name]:g}): the rewards or their group statistics "
            "are not finite in float32 (|value| up to 3.4e38, and squared in the group std); allowed: rewards of "
            "moderate size, e.g. in [-1e3, 1e3] (scale the reward)")


def score_rollouts(cfg, rows: list[dict], ro: Rollout, rewards=None, step: int = 0) -> ScoredBatch:
    """Reward every completion (`rewards`: resolved `onpolicy.rewards.sources.Reward`s, default `cfg.rewards`;
    each gets the prompt row's other columns, `completion_ids` and `trainer_state`; prompts and completions as
    messages for chat-message data, as strings otherwise: `onpolicy.chat.reward_inputs`), compute advantages
    (`trainer.algo`) and the loss mask (`Rollout.loss_mask`, `trainer.dynamic_sampling`,
    `trainer.overlong_filter`). `step`: 0-based."""
    from onpolicy.chat import RESERVED_ROW_KEYS
    from onpolicy.rewards import combine_rewards, resolve_rewards

    t, g = cfg.trainer, ro.group_size
    reward_fns = resolve_rewards(cfg.rewards if rewards is None else rewards)
    expanded = [rows[i] for i in ro.group_index]
    columns = {k: [r.get(k) for r in expanded] for k in rows[0] if k not in RESERVED_ROW_KEYS + _NOT_COLUMNS}
    prompts, completions, extra = ro.reward_inputs(rows)  # a multi-turn rollout: messages, env_reward, ...
    columns.update(extra)
    total, per_name = combine_rewards(reward_fns, prompts, completions,
                                      completion_ids=[list(c) for c in ro.completion_ids],
                                      trainer_state=RewardState(global_step=step, max_steps=t.steps), **columns)
    rewards = torch.tensor(total, dtype=torch.float32)
    adv = group_advantages(rewards, g, t.algo)
    if not (torch.isfinite(rewards).all() and torch.isfinite(adv).all()):
        raise ValueError(_overflow_message(reward_fns, per_name))
    lens = torch.tensor(ro.seq_lens, dtype=torch.long)
    mask = torch.ones(ro.num_tokens, dtype=torch.bool)  # scored tokens are the policy's (Rollout.loss_mask)
    if ro.excluded is not None:  # e.g. trajectories an environment error ended
        mask &= ~torch.repeat_interleave(torch.tensor(ro.excluded, dtype=torch.bool), lens)
    kept_groups = len(rows)
    if t.dynamic_sampling:
        dropped = zero_variance_groups(rewards, g)
        token_group = torch.repeat_interleave(torch.tensor(ro.group_index, dtype=torch.long), lens)
        mask &= ~dropped[token_group]
        kept_groups -= int(dropped.sum())
    truncated = torch.tensor(ro.truncated, dtype=torch.bool)
    if t.overlong_filter:
        mask &= ~torch.repeat_interleave(truncated, lens)
    return ScoredBatch(rollout=ro, rewards=rewards, advantages=adv, loss_mask=mask, truncated=truncated,
                       kept_groups=kept_groups, reward_by_name=per_name)
