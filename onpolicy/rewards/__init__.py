"""Reward registry: `@register_reward(name)` and `get_reward(name)`; `combine_rewards` sums weighted rewards.

A reward function has TRL's signature `fn(prompts: list[str], completions: list[str], **kwargs) -> list[float]`;
kwargs carry the data set's columns as lists aligned with `completions` (e.g. `answer`). Shipped:
`math_answer`, `math_answer_lenient` (last-number fallback on), `format` (this package) and `embedded`
(`onpolicy.tasks.embedded_reward`), registered below from one table: the reward modules define plain
functions and the imports run one way (rewards -> tasks). Left out: async/batched remote rewards, `None`
("not applicable") rewards -- every function must return one finite float per completion.
"""
from __future__ import annotations

from onpolicy.rewards.format import format_reward
from onpolicy.rewards.math_answer import math_answer, math_answer_lenient
from onpolicy.rewards.registry import (RewardFn, available_rewards, check_rewards, combine_rewards, get_reward,
                                       register_reward)
from onpolicy.tasks import embedded_reward

__all__ = ["RewardFn", "available_rewards", "check_rewards", "combine_rewards", "get_reward", "register_reward",
           "BUILTIN_REWARDS"]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "embedded": embedded_reward,
    "format": format_reward,
    "math_answer": math_answer,
    "math_answer_lenient": math_answer_lenient,
}
for _name, _fn in BUILTIN_REWARDS.items():
    register_reward(_name)(_fn)
