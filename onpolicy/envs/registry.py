"""Environments by name: `register_env(name)`, and `resolve_env(env_args)` -> a zero-argument factory.

`env.name` is a registered name (the built-ins `calculator`, `guess`, `tool_methods`, or one added with
`register_env`) or an
import path `package.module:Class`, imported as reward import paths are (`onpolicy.rewards.sources`): from
sys.path or, for this lookup only, the config's directory; nothing read from checkpoints or data is imported.
`env.kwargs` are checked against the constructor's signature here, before any compute. Errors are one line
naming `env.name` or `env.kwargs`. Left out: environments served over a network (wrap the client in a class).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from onpolicy.registry import Registry

_REGISTRY = Registry("register_env", reserved=":")
register_env = _REGISTRY.register  # decorator: an environment class (or factory) under a name


def available_envs() -> list[str]:
    return _REGISTRY.names()


def _lookup(name: str, config_dir: str | None):
    if ":" in name:
        from onpolicy.rewards.sources import import_object

        return import_object(name, config_dir, kind="Class")
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; allowed: a registered name ({', '.join(available_envs())}) "
                         "or an import path 'package.module:Class'")
    return _REGISTRY[name]


def resolve_env(env_args, config_dir: str | None = None) -> Callable[[], object]:
    """A factory making one environment per call (`env.name` with `env.kwargs` bound)."""
    try:
        cls = _lookup(env_args.name, config_dir)
    except ValueError as e:
        raise ValueError(f"env.name: {e}") from None
    if not callable(cls) or not all(callable(getattr(cls, m, None)) for m in ("reset", "step")):
        raise ValueError(f"env.name: {env_args.name!r} is not an environment; allowed: a class with reset(row) and "
                         "step(turn) methods (onpolicy.envs.base)")
    try:
        inspect.signature(cls).bind(**env_args.kwargs)
    except TypeError as e:
        raise ValueError(f"env.kwargs: {e} for {env_args.name!r}; got {env_args.kwargs!r}") from None
    except ValueError:  # no signature to check (a builtin): the first construction reports it
        pass
    return functools.partial(cls, **env_args.kwargs)
