"""The reward `env`: the environment's own reward of a trajectory (the sum of its step rewards).

Registered with the built-in rewards (`rewards: [{name: env}]`); it reads the column `env_reward` that
multi-turn scoring passes to every reward function (beside `turn_rewards` and `env_finish`). Left out:
discounting (write a reward function over `turn_rewards` for that), the environment instances themselves
(they may not cross processes; keep what a reward needs in the step rewards).
"""
from __future__ import annotations


def env_reward(prompts, completions, env_reward=None, **_) -> list[float]:
    if env_reward is None or len(env_reward) != len(completions):
        raise ValueError("reward 'env' needs multi-turn rollouts (set env.name): it scores the environment's own "
                         "reward of each trajectory")
    return [float(r) for r in env_reward]
