"""Where a reward comes from: `resolve_rewards(cfg.rewards)` -> `Reward(label, weight, fn)` per entry.

An entry (`onpolicy.config.RewardArgs`, or anything with `.name`, `.model`, `.weight`) names one of:
- a registered reward (`math_answer`, `format`, `embedded`, or one added with `register_reward`);
- an import path `package.module:function` (`module:Class.method` works too): the module is imported from
  `sys.path` (PYTHONPATH, the working directory) or, for this lookup only, from `config_dir` (the directory of
  the YAML config). Importing runs the module's top-level code: the user named it in their own config, as
  TRL's `--reward_funcs my_pkg.rewards.fn` does; nothing read from checkpoints or data is imported;
- a callable handed over in Python (`callables`: name -> function, `onpolicy.train(reward_funcs=[...])`);
- `model: <dir>`: a local HF `*ForSequenceClassification` directory (`onpolicy.rewards.reward_model`).

The label is the metric name (`reward/<label>/mean`): the registered name, the function's name, or the model
directory's name; labels must be unique. Everything here runs before compute: a bad entry raises a one-line
ValueError naming `rewards[i].name` or `rewards[i].model`. Left out: hub model ids, async reward functions.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from onpolicy.rewards.registry import available_rewards, get_reward


@dataclass(frozen=True)
class Reward:
    """One resolved reward: `fn(prompts, completions, **kwargs) -> list[float | None]` with its weight."""

    label: str
    weight: float
    fn: Callable


_IMPORTED: dict[str, Callable] = {}


def _attribute_path_ok(attr: str) -> bool:
    return bool(attr) and all(part.isidentifier() for part in attr.split("."))


def import_object(path: str, config_dir: str | None = None, kind: str = "function"):
    """The object at `module:attr` (`module:Class.method` too), imported from sys.path or (for this lookup only)
    `config_dir`. Used for rewards and environments (onpolicy.envs, `kind="Class"`); errors are one line naming
    `path`."""
    module_name, _, attr = path.partition(":")
    if not all(p.isidentifier() for p in module_name.split(".")) or not _attribute_path_ok(attr):
        raise ValueError(f"{path!r} is not an import path; allowed: 'package.module:{kind}'")
    if path in _IMPORTED:
        return _IMPORTED[path]
    added = bool(config_dir) and os.path.abspath(config_dir) not in sys.path
    if added:
        sys.path.insert(0, os.path.abspath(config_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            where = " or next to the config file" if config_dir else ""
            raise ValueError(f"cannot import module {module_name!r} for {path!r}: not found on PYTHONPATH{where}"
                             ) from None
        raise ValueError(f"importing {module_name!r} for {path!r} failed: {e}") from None
    except Exception as e:  # the module's own top-level code failed
        raise ValueError(f"importing {module_name!r} for {path!r} raised {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(os.path.abspath(config_dir))
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute "
                             f"{attr!r}")
        obj = getattr(obj, part)
    _IMPORTED[path] = obj
    return obj


def import_reward(path: str, config_dir: str | None = None) -> Callable:
    """The callable at `module:attr` (`import_object`), checked to be callable."""
    obj = import_object(path, config_dir)
    if not callable(obj):
        raise ValueError(f"{path!r} is a {type(obj).__name__}, not a callable; allowed: a function "
                         "f(prompts, completions, **kwargs) -> list[float | None]")
    return obj


def callable_name(fn: Callable) -> str:
    """The name a Python callable is logged under: its `__name__`, else its class name (as TRL names them)."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def _resolve_name(name: str, config_dir: str | None, callables: dict) -> tuple[Callable, str]:
    if name in callables:
        return callables[name], callable_name(callables[name])
    if ":" in name:
        return import_reward(name, config_dir), name.rpartition(":")[2].rpartition(".")[2]
    try:
        return get_reward(name), name
    except ValueError:
        raise ValueError(f"unknown reward name {name!r}; allowed: a registered name ({', '.join(available_rewards())}) "
                         "or an import path 'package.module:function'") from None


def resolve_rewards(reward_args: Sequence, config_dir: str | None = None,
                    callables: dict[str, Callable] | None = None) -> list[Reward]:
    """`cfg.rewards` -> [Reward]; entries that are already `Reward`s pass through. Raises a one-line ValueError
    naming `rewards[i].name` / `rewards[i].model` for an unknown name, a failed import, a non-callable or a bad
    reward-model directory, and `rewards` for two entries with one label."""
    from onpolicy.rewards.reward_model import reward_model

    out: list[Reward] = []
    for i, r in enumerate(reward_args):
        if isinstance(r, Reward):
            out.append(r)
            continue
        model = getattr(r, "model", None)
        where = f"rewards[{i}].{'model' if model else 'name'}"
        try:
            if model:
                fn = reward_model(model)
                label = fn.__name__
            else:
                fn, label = _resolve_name(r.name, config_dir, callables or {})
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append(Reward(label=label, weight=float(r.weight), fn=fn))
    labels = [r.label for r in out]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ValueError(f"rewards: rewards[{labels.index(label)}] and rewards[{i}] both log as "
                             f"reward/{label}; allowed: rewards with distinct names")
    return out
