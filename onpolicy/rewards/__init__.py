"""Rewards: the registry (`@register_reward(name)`, `get_reward(name)`), `resolve_rewards` (built-in names, import
paths `package.module:function`, Python callables, reward-model directories -> `Reward`s; `sources`), reward
models (`reward_model`) and `combine_rewards`, the weighted sum. docs/rewards.md is the user's guide.

A reward function has TRL's signature `fn(prompts, completions, **kwargs) -> list[float | None]`; kwargs carry
`completion_ids`, `trainer_state` and the data set's columns as lists aligned with `completions` (e.g. `answer`);
None means "does not apply". Shipped: `math_answer`, `math_answer_lenient` (last-number fallback on), `format`
(this package), `embedded` (`onpolicy.tasks.embedded_reward`) and `env` (an environment's own reward of a
trajectory, `onpolicy.envs.reward`), registered below from one table: the reward
modules define plain functions and the imports run one way (rewards -> tasks, envs.reward). Left out:
async/batched remote rewards.
"""
from __future__ import annotations

from onpolicy.envs.reward import env_reward
from onpolicy.rewards.format import format_reward
from onpolicy.rewards.math_answer import math_answer, math_answer_lenient
from onpolicy.rewards.registry import (RewardFn, available_rewards, check_rewards, combine_rewards, get_reward,
                                       register_reward)
from onpolicy.rewards.sources import Reward, resolve_rewards
from onpolicy.tasks import embedded_reward

__all__ = ["RewardFn", "Reward", "available_rewards", "check_rewards", "combine_rewards", "get_reward",
           "register_reward", "resolve_rewards", "BUILTIN_REWARDS"]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "embedded": embedded_reward,
    "env": env_reward,
    "format": format_reward,
    "math_answer": math_answer,
    "math_answer_lenient": math_answer_lenient,
}
for _name, _fn in BUILTIN_REWARDS.items():
    register_reward(_name)(_fn)
