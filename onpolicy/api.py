"""`onpolicy.train(config, reward_funcs=[...], reward_weights=[...])`: a run from Python, as TRL's
`GRPOTrainer(reward_funcs=..., args=GRPOConfig(reward_weights=...))` takes one.

`config`: an `ExperimentConfig`, a dict of sections, or a YAML path (its directory is searched for import-path
rewards, as on the command line). `reward_funcs` (optional) replaces `cfg.rewards`: each item is a Python
callable `f(prompts, completions, **kwargs) -> list[float | None]` (logged as `reward/<f.__name__>/...`), a
string (a registered reward or `package.module:function`), or a local reward-model directory (a string naming a
directory holding config.json). `reward_weights`: one float per reward (default 1.0 each). The recipes run this
same function after parsing the command line. Each callable is recorded in the saved config.yaml by its import
path when `module:qualname` imports back to the same object (so the YAML re-runs from the command line), else by
its name. Left out: hub model ids, a ready-made model or tokenizer object (pass `model.path`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence


def _import_path(fn: Callable) -> str | None:
    """`module:qualname` when importing it gives back `fn` (not for __main__, lambdas or nested functions)."""
    import importlib

    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is fn else None


def reward_entries(reward_funcs: Sequence, reward_weights: Sequence[float] | None = None
                   ) -> tuple[list[dict], dict[str, Callable]]:
    """(`rewards` config entries, {entry name: callable}) for TRL-style `reward_funcs` and `reward_weights`."""
    from onpolicy.rewards.sources import callable_name

    if callable(reward_funcs) or isinstance(reward_funcs, str):
        reward_funcs = [reward_funcs]
    funcs = list(reward_funcs)
    if not funcs:
        raise ValueError("reward_funcs: expected at least one reward (a callable, a name or a reward-model directory)")
    weights = [1.0] * len(funcs) if reward_weights is None else list(reward_weights)
    if len(weights) != len(funcs):
        raise ValueError(f"reward_weights: got {len(weights)} weights for {len(funcs)} reward_funcs; allowed: one "
                         "weight per reward function")
    entries, callables = [], {}
    for i, (fn, w) in enumerate(zip(funcs, weights)):
        if isinstance(fn, str):
            is_model = ":" not in fn and os.path.isfile(os.path.join(fn, "config.json"))
            entries.append({"model" if is_model else "name": fn, "weight": w})
        elif callable(fn):
            name = _import_path(fn) or callable_name(fn)
            entries.append({"name": name, "weight": w})
            callables[name] = fn
        else:
            raise ValueError(f"reward_funcs[{i}]: got a {type(fn).__name__}; allowed: a callable, a reward name or "
                             "import path, or a reward-model directory")
    return entries, callables


def as_config(config: Any, rewards: list[dict] | None = None):
    """(ExperimentConfig, directory to search for import-path rewards) from a config object, dict or YAML path;
    `rewards` replaces the config's reward list."""
    from onpolicy.config import ExperimentConfig
    from onpolicy.config_cli import load_yaml

    config_dir = None
    if isinstance(config, (str, os.PathLike)):
        config_dir = os.path.dirname(os.path.abspath(config))
        config = load_yaml(config)
    if isinstance(config, ExperimentConfig):
        return (config if rewards is None else dataclasses.replace(config, rewards=rewards)), config_dir
    if not isinstance(config, dict):
        raise ValueError(f"config: got a {type(config).__name__}; allowed: an ExperimentConfig, a dict of sections "
                         "or a YAML path")
    data = dict(config)
    if rewards is not None:
        data["rewards"] = rewards
    return ExperimentConfig.from_dict(data), config_dir


def train(config: Any, reward_funcs: Sequence | Callable | str | None = None,
          reward_weights: Sequence[float] | None = None, log: Callable = print, parts=None) -> dict:
    """Check the rewards and the launch, start the processes of a multi-process launch, run `config`'s RL steps;
    returns the run summary (`final_policy`, rewards, KL, ...). Errors in the config, the rewards or the launch
    raise ValueError (one line) before any compute. `parts`: `onpolicy.trainer.TrainerParts` to swap (where
    rollouts come from, how they are scored, the loss, ...), default the standard ones."""
    from onpolicy.config import ConfigError, check_env
    from onpolicy.rewards.sources import resolve_rewards
    from onpolicy.trainer import train as run_steps
    from onpolicy.trainer.launch import check_launch, start_processes

    entries, callables = (None, {}) if reward_funcs is None else reward_entries(reward_funcs, reward_weights)
    if reward_funcs is None and reward_weights is not None:
        raise ValueError("reward_weights: given without reward_funcs; set weights in the config's rewards instead")
    cfg, config_dir = as_config(config, entries)
    try:
        rewards = resolve_rewards(cfg.rewards, config_dir, callables)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_env(cfg, config_dir)  # an import-path environment next to the config file resolves from there
    check_launch(cfg)
    is_main = start_processes(cfg)
    return run_steps(cfg, log=log if is_main else (lambda *a, **k: None), rewards=rewards, parts=parts)
