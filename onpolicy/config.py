"""Experiment configuration: one dataclass per section (the engine's own `EngineConfig` is the `engine`
section), YAML `--config` plus dotted CLI overrides (`onpolicy.config_cli`), typed fields with declared bounds
(`onpolicy.config_fields`: `_f(16, "help", ge=1)`); a section's `_validate` holds only the checks that relate
fields. The start-up check that needs the model's config.json is the model builder's (`build.check_context`).

This module is the import surface (`from onpolicy.config import ...`); the work is split by job:
    config_fields       typed fields, coercion, declared bounds, `ConfigError`
    config_sections     the run's own sections (model, data, sampling, trainer, rewards[], logging)
    config_experiment   `SECTIONS` (section name -> owning dataclass) and `ExperimentConfig` (cross-section checks)
    config_load         `parse_args` (YAML + CLI + a recipe's fixed keys) and the name/path checks
    config_cli          the command line -> a config dict (generic over `SECTIONS`)
Nothing here imports onpolicy.trainer.

Why no library (evaluated: jsonargparse 4.53, tyro 1.0, omegaconf 2.4; TRL's `TrlParser` is flat -- `--lr`, not
`--trainer.lr`): none is on the H100 image, so any would be a new core dependency carried as a wheel
(tyro also pulls typeguard, docstring-parser, typing-extensions); none gives the one-line errors we promise --
jsonargparse: two lines ('Parser key "trainer.steps":' / 'Not of type PositiveInt: 0 does not conform to
restriction v>0') and 'unrecognized arguments: --trainer.nope 1' without the allowed names; tyro: a 9-line
boxed message; omegaconf: four lines (full_key, reference_type, ...), no bounds or choices, and `trainer.lr=x`
overrides rather than `--trainer.lr x`. The cross-field checks (tis_cap / strict_onpolicy vs invariant,
per-algorithm defaults, unique reward names) would stay ours with any of them. Ours is ~820 lines over six
modules with PyYAML as its only dependency.

Errors: unknown keys and bad values raise `ConfigError` (a `ValueError`) naming the dotted field and the
allowed values, before any compute. Left out: environment-variable overrides, per-element CLI edits of the
`rewards` list (pass the whole list: `--rewards '[{name: math_answer}, {name: format, weight: 0.1}]'`).
"""
from __future__ import annotations

from onpolicy.algorithms import ALGO_DEFAULTS, ALGOS, LOSS_AGGS
from onpolicy.config_experiment import SECTIONS, ExperimentConfig
from onpolicy.config_fields import ConfigError
from onpolicy.config_load import check_env, check_names_and_paths, check_rewards, parse_args
from onpolicy.config_sections import DataArgs, LoggingArgs, ModelArgs, RewardArgs, SamplingArgs, TrainerArgs
from onpolicy.engine.params import EngineConfig
from onpolicy.envs.config import EnvArgs
from onpolicy.evaluation import EvalArgs
from onpolicy.lora.config import LoraArgs

__all__ = ["ConfigError", "ExperimentConfig", "ModelArgs", "DataArgs", "SamplingArgs", "EngineConfig", "TrainerArgs",
           "RewardArgs", "EvalArgs", "EnvArgs", "LoggingArgs", "LoraArgs", "SECTIONS", "ALGOS", "ALGO_DEFAULTS",
           "LOSS_AGGS", "parse_args", "check_rewards", "check_env", "check_names_and_paths"]
