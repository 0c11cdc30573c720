"""`parse_args(argv)`: an `ExperimentConfig` from the command line -- `--config x.yaml`, dotted overrides
(onpolicy.config_cli), a recipe's fixed keys -- with the rewards and the environment resolved; and the checks
`--print-config` adds (data set, model directory, context budget). Reads no data rows and builds no model.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from onpolicy.config_cli import apply_override, help_text, load_yaml, split_cli
from onpolicy.config_experiment import REWARDS_HELP, SECTIONS, ExperimentConfig
from onpolicy.config_fields import ConfigError

__all__ = ["parse_args", "check_rewards", "check_env", "check_names_and_paths"]


def parse_args(argv: list[str] | None = None, forced: dict[str, Any] | None = None) -> ExperimentConfig:
    """`--config x.yaml`, then CLI overrides, then `forced` (a recipe's fixed keys, e.g. trainer.algo).

    `--print-config` checks reward names and paths (`check_names_and_paths`), prints the resolved YAML and
    exits; `-h/--help` prints every field's help and exits.
    An override that contradicts `forced` raises `ConfigError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(SECTIONS, [REWARDS_HELP]))
        raise SystemExit(0)
    config_path, overrides, print_config = split_cli(SECTIONS, argv)
    data = load_yaml(config_path) if config_path else {}
    for key, value in overrides:
        apply_override(SECTIONS, data, key, value)
    for key, value in (forced or {}).items():
        given = [v for k, v in overrides if k == key]
        if given and given[-1] != value:
            raise ConfigError(f"--{key}: this recipe fixes {key} = {value!r}; got {given[-1]!r}")
        apply_override(SECTIONS, data, key, value)
    cfg = ExperimentConfig.from_dict(data)
    check_rewards(cfg, os.path.dirname(os.path.abspath(config_path)) if config_path else None)
    check_env(cfg, os.path.dirname(os.path.abspath(config_path)) if config_path else None)
    if print_config:
        check_names_and_paths(cfg)
        print(cfg.to_yaml())
        raise SystemExit(0)
    return cfg


def check_rewards(cfg: ExperimentConfig, config_dir: str | None = None) -> None:
    """Every `cfg.rewards` entry resolves: a registered name, an importable callable (`config_dir`, the YAML's
    directory, is searched for this lookup only), or a reward-model directory (checked, not loaded)."""
    from onpolicy.rewards import check_rewards as resolve_all

    try:
        resolve_all(cfg.rewards, config_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_env(cfg: ExperimentConfig, config_dir: str | None = None) -> None:
    """`env.name` resolves (a registered environment or an importable class) and takes `env.kwargs`."""
    if cfg.env.name is None:
        return
    from onpolicy.envs import resolve_env

    try:
        resolve_env(cfg.env, config_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_names_and_paths(cfg: ExperimentConfig) -> None:
    """What `--print-config` checks beyond the fields and the rewards (resolved by `parse_args` for every run):
    the data set and the model directory exist and the context fits (`check_context`). Reads no data rows and
    builds no model."""
    from onpolicy.build import check_context
    from onpolicy.data import check_dataset

    check_dataset(cfg.data)
    check_context(cfg)
