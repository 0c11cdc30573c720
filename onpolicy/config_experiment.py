"""`ExperimentConfig`: one run's whole configuration -- the table of sections (`SECTIONS`: name -> the
dataclass that owns it) and the checks that relate sections (LoRA needs the native engine, the algorithm's
group size, the environment's fields against the rest). Each section validates its own fields when built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from onpolicy.algorithms import MIN_GENERATIONS
from onpolicy.config_fields import ConfigError, coerce
from onpolicy.config_sections import DataArgs, LoggingArgs, ModelArgs, RewardArgs, SamplingArgs, TrainerArgs
from onpolicy.engine.params import EngineConfig
from onpolicy.envs.config import EnvArgs, check_env_fields
from onpolicy.evaluation import EvalArgs
from onpolicy.lora.config import LoraArgs

__all__ = ["ExperimentConfig", "SECTIONS", "REWARDS_HELP"]

REWARDS_HELP = ("rewards: --rewards '[{name: NAME, weight: W}, {model: DIR, weight: W}, ...]' "
                "(default [{name: embedded}]); NAME: a registered reward or 'package.module:function' "
                "(docs/rewards.md)")
SECTIONS = {"model": ModelArgs, "data": DataArgs, "sampling": SamplingArgs, "engine": EngineConfig,
            "trainer": TrainerArgs, "lora": LoraArgs, "eval": EvalArgs, "env": EnvArgs, "logging": LoggingArgs}


@dataclass
class ExperimentConfig:
    """One run's whole configuration; sections may be given as dicts (coerced and validated)."""

    model: ModelArgs = field(default_factory=ModelArgs, metadata={"help": "policy model"})
    data: DataArgs = field(default_factory=DataArgs, metadata={"help": "prompt data set"})
    sampling: SamplingArgs = field(default_factory=SamplingArgs, metadata={"help": "rollout sampling"})
    engine: EngineConfig = field(default_factory=EngineConfig, metadata={"help": "inference engine"})
    trainer: TrainerArgs = field(default_factory=TrainerArgs, metadata={"help": "RL algorithm and optimizer"})
    lora: LoraArgs = field(default_factory=LoraArgs, metadata={"help": "LoRA adapters (r: 0 = full fine-tuning)"})
    rewards: list[RewardArgs] = field(default_factory=lambda: [RewardArgs(name="embedded")],
                                      metadata={"help": "weighted reward functions"})
    eval: EvalArgs = field(default_factory=EvalArgs, metadata={"help": "held-out evaluation"})
    env: EnvArgs = field(default_factory=EnvArgs, metadata={"help": "multi-turn environment (null name: single-turn)"})
    logging: LoggingArgs = field(default_factory=LoggingArgs, metadata={"help": "metrics sinks"})

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            setattr(self, name, coerce(getattr(self, name), cls, name))
        rewards = self.rewards
        if not isinstance(rewards, list) or not rewards:
            raise ConfigError(f"rewards: expected a non-empty list of {{name, weight}} mappings, got {rewards!r}")
        self.rewards = [coerce(r, RewardArgs, f"rewards[{i}]") for i, r in enumerate(rewards)]
        names = [r.key for r in self.rewards]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards: duplicate rewards {names}; allowed: each name once (and each model once)")
        if self.lora.enabled and self.engine.backend != "native":
            raise ConfigError(f"lora.r: LoRA adapters run on the native engine only, and engine.backend is "
                              f"{self.engine.backend!r}; allowed with it: 0 (or engine.backend: native)")
        algo, g = self.trainer.algo, self.sampling.num_generations
        if g < MIN_GENERATIONS[algo]:
            raise ConfigError(f"sampling.num_generations: got {g}; allowed: an int >= {MIN_GENERATIONS[algo]} with "
                              f"trainer.algo {algo!r} (its advantages compare the completions of one prompt: a group "
                              "of one has advantage 0 and learns nothing)")
        check_env_fields(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ExperimentConfig":
        data = dict(data or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {unknown}; allowed: {', '.join(allowed)}")
        for name in SECTIONS:
            if data.get(name) is None:
                data.pop(name, None)
        return cls(**data)

    def to_dict(self) -> dict:
        """Plain data; a reward entry lists only the fields it sets (name or model) and its weight."""
        out = dataclasses.asdict(self)
        out["rewards"] = [{k: v for k, v in r.items() if v is not None} for r in out["rewards"]]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
