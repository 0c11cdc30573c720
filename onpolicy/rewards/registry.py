"""The reward registry: `register_reward(name)`, `get_reward(name)`, `check_rewards`, `combine_rewards`.

Imports nothing of onpolicy. The built-in rewards are registered from one table by the package
`onpolicy.rewards` (importing this module imports the package first). Left out: unregistering, per-run
registries.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

RewardFn = Callable[..., list]
_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register `fn` under `name`; a second, different function for a taken name raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_reward: name must be a non-empty string, got {name!r}")

    def deco(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise ValueError(f"register_reward({name!r}): expected a callable, got {type(fn).__name__}")
        old = _REGISTRY.get(name)
        if old is not None and old is not fn and getattr(old, "__qualname__", None) != getattr(fn, "__qualname__", 0):
            raise ValueError(f"register_reward: name {name!r} is already taken by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    if name not in _REGISTRY:
        raise ValueError(f"rewards: unknown reward name {name!r}; registered: {', '.join(available_rewards())}")
    return _REGISTRY[name]


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def check_rewards(reward_args: Sequence) -> None:
    """Raise ValueError for any unknown name in `cfg.rewards` (call before compute)."""
    for i, r in enumerate(reward_args):
        try:
            get_reward(r.name)
        except ValueError as e:
            raise ValueError(f"rewards[{i}].name: {e}") from None


def combine_rewards(reward_args: Sequence, prompts: list[str], completions: list[str],
                    **columns) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the configured rewards -> (total per completion, {name: unweighted values}).

    `reward_args`: `cfg.rewards` (objects with `.name` and `.weight`). `columns`: data columns, each a list with
    one entry per completion (repeat a prompt's row for each of its G completions).
    """
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"combine_rewards: prompts ({len(prompts)}) and completions ({n}) must have equal length")
    for key, col in columns.items():
        if not isinstance(col, (list, tuple)) or len(col) != n:
            got = len(col) if isinstance(col, (list, tuple)) else type(col).__name__
            raise ValueError(f"combine_rewards: column {key!r} must be a list of length {n}, got {got}")
    if not reward_args:
        raise ValueError("combine_rewards: reward_args (cfg.rewards) must list at least one reward")
    check_rewards(reward_args)
    total = [0.0] * n
    per_name: dict[str, list[float]] = {}
    for r in reward_args:
        try:
            values = get_reward(r.name)(prompts=list(prompts), completions=list(completions), **columns)
        except Exception as e:  # noqa: BLE001 -- any failure of a reward function is reported with its name
            raise ValueError(f"reward {r.name!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(f"reward {r.name!r} returned {got}; expected a list of {n} floats")
        vals = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"reward {r.name!r} returned {v!r}; every value must be a finite float")
            vals.append(float(v))
        per_name[r.name] = vals
        total = [t + r.weight * v for t, v in zip(total, vals)]
    return total, per_name

