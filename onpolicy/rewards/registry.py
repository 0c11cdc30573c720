"""The reward registry: `register_reward(name)`, `get_reward(name)`, `check_rewards`, `combine_rewards`.

The built-in rewards are registered from one table by the package `onpolicy.rewards` (importing this module
imports the package first); import paths, Python callables and reward models are resolved by
`onpolicy.rewards.sources`. Left out: unregistering, per-run registries.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from onpolicy.registry import Registry

RewardFn = Callable[..., list]
_REGISTRY = Registry("register_reward")
register_reward = _REGISTRY.register  # decorator: a reward function under a name


def get_reward(name: str) -> RewardFn:
    if name not in _REGISTRY:
        raise ValueError(f"rewards: unknown reward name {name!r}; registered: {', '.join(available_rewards())}")
    return _REGISTRY[name]


def available_rewards() -> list[str]:
    return _REGISTRY.names()


def check_rewards(reward_args: Sequence, config_dir: str | None = None) -> None:
    """Raise ValueError for any entry of `cfg.rewards` that cannot be resolved (call before compute)."""
    from onpolicy.rewards.sources import resolve_rewards

    resolve_rewards(reward_args, config_dir)


def _checked_values(label: str, values, n: int) -> list:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"reward {label!r} returned {got}; expected a list of {n} floats")
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"reward {label!r} returned {v!r}; every value must be a finite float or None")
        out.append(float(v))
    return out


def combine_rewards(rewards: Sequence, prompts: list, completions: list, /, *, completion_ids: list | None = None,
                    trainer_state=None, **columns) -> tuple[list[float], dict[str, list]]:
    """Weighted sum of the rewards -> (total per completion, {label: unweighted values, None where n/a}).

    `rewards`: `cfg.rewards` entries or resolved `Reward`s. Each function is called as TRL calls one:
    `fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns)` (the last three only
    when given); prompts and completions are passed as given (strings, or message lists for chat data).
    `columns`: data columns, each a list with one entry per completion (repeat a prompt's row for each of its G
    completions). A value of None means "does not apply": the total sums the rewards that apply; a completion
    no reward applies to is an error.
    """
    from onpolicy.rewards.sources import resolve_rewards

    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"combine_rewards: prompts ({len(prompts)}) and completions ({n}) must have equal length")
    for key, col in columns.items():
        if not isinstance(col, (list, tuple)) or len(col) != n:
            got = len(col) if isinstance(col, (list, tuple)) else type(col).__name__
            raise ValueError(f"combine_rewards: column {key!r} must be a list of length {n}, got {got}")
    if not rewards:
        raise ValueError("combine_rewards: rewards (cfg.rewards) must list at least one reward")
    extra = {} if completion_ids is None else {"completion_ids": completion_ids}
    if trainer_state is not None:
        extra["trainer_state"] = trainer_state
    total: list[float | None] = [None] * n
    per_label: dict[str, list] = {}
    for r in resolve_rewards(rewards):
        try:
            values = r.fn(prompts=list(prompts), completions=list(completions), **extra, **columns)
        except Exception as e:  # noqa: BLE001 -- any failure of a reward function is reported with its name
            raise ValueError(f"reward {r.label!r} raised {type(e).__name__}: {e}") from e
        vals = _checked_values(r.label, values, n)
        per_label[r.label] = vals
        total = [t if v is None else (t or 0.0) + r.weight * v for t, v in zip(total, vals)]
    if None in total:
        j = total.index(None)
        raise ValueError(f"combine_rewards: every reward returned None for completion {j}; at least one reward "
                         "must score each completion")
    return total, per_label
