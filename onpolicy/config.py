"""Experiment configuration: nested dataclasses with help text, YAML `--config` plus dotted CLI overrides.

Why not a library: transformers' `HfArgumentParser` (and TRL's `TrlParser`, which adds `--config` YAML on top
of it) map *flat* dataclasses to argparse flags -- `--lr`, not `--trainer.lr` -- and two sections with a field
of the same name (`dtype`, `seed`, ...) collide in one argparse namespace. Nothing installed here handles nested
sections without a new dependency (pydantic-settings' CLI source would, but it is not among the H100 image's
packages and would pull pydantic into the core). So this module
is a small adapter: YAML -> dict, `--section.field value` overrides on the dict (values parsed as YAML scalars
or flow lists `[a,b]`), then typed dataclasses that coerce and validate every field in `__post_init__`
(the coercion machinery is `onpolicy.config_fields`).

Errors: unknown keys and bad values raise `ConfigError` (a `ValueError`) naming the dotted field and the
allowed values, before any compute. Left out: environment-variable overrides, per-element CLI edits of the
`rewards` list (pass the whole list: `--rewards '[{name: math_answer}, {name: format, weight: 0.1}]'`).
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from onpolicy.config_fields import ConfigError, Section, coerce, config_field, type_hints
from onpolicy.trainer.algorithms import ALGO_DEFAULTS, ALGOS, LOSS_AGGS

__all__ = ["ConfigError", "ExperimentConfig", "ModelArgs", "DataArgs", "SamplingArgs", "EngineArgs", "TrainerArgs",
           "RewardArgs", "LoggingArgs", "SECTIONS", "ALGOS", "ALGO_DEFAULTS", "LOSS_AGGS", "parse_args", "load_yaml",
           "apply_override", "help_text"]

_f = config_field


@dataclass
class ModelArgs(Section):
    _name: ClassVar[str] = "model"
    path: str = _f("tiny", "'tiny' = built-in tiny Qwen3 with CharTokenizer; otherwise a local HF model directory")
    dtype: str = _f("float32", "parameter/compute dtype", choices=("float32", "bfloat16"))
    device: str = _f("auto", "'auto' = cuda when available, else cpu", choices=("auto", "cpu", "cuda"))
    tiny: dict = _f(help="overrides for the tiny model config (hidden_size, num_hidden_layers, ...)", factory=dict)

    def _validate(self):
        self._check_nonblank("path", "'tiny' or a model directory")


@dataclass
class DataArgs(Section):
    _name: ClassVar[str] = "data"
    dataset: str = _f("embedded:arith", "'embedded:<task>' or a local json/jsonl/parquet/csv file or save_to_disk dir")
    split: str = _f("train", "split of a save_to_disk DatasetDict or a data directory (single files are one split)")
    prompt_column: str = _f("prompt", "column holding the prompt text")
    answer_column: str = _f("answer", "column holding the reference answer (passed to rewards as `answer`)")
    chat_template: bool = _f(False, "wrap prompts with tokenizer.apply_chat_template (generation prompt added)")
    system_prompt: str | None = _f(None, "system message for the chat template (only with chat_template: true)")
    max_prompt_tokens: int = _f(256, "prompts longer than this (in tokens) are dropped with a warning")
    num_examples: int | None = _f(None, "keep only the first N source rows (None = all)")
    shuffle_seed: int = _f(0, "seed of the per-epoch prompt order")

    def _validate(self):
        self._check_nonblank("dataset", "'embedded:<task>' or a local path")
        if self.dataset.startswith("embedded:"):
            self._check(bool(self.dataset.split(":", 1)[1]), "dataset", "'embedded:<task>' with a task name")
        self._check(bool(self.prompt_column), "prompt_column", "a non-empty column name")
        self._check(bool(self.answer_column), "answer_column", "a non-empty column name")
        self._check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "an int >= 1")
        self._check(self.num_examples is None or self.num_examples >= 1, "num_examples", "null or an int >= 1")
        self._check(self.system_prompt is None or self.chat_template, "system_prompt",
                    "null unless data.chat_template is true")


@dataclass
class SamplingArgs(Section):
    _name: ClassVar[str] = "sampling"
    num_generations: int = _f(8, "completions per prompt (G, the group size)")
    temperature: float = _f(1.0, "sampling temperature; logprobs are taken at this temperature")
    top_p: float = _f(1.0, "nucleus sampling mass, in (0, 1]")
    top_k: int = _f(-1, "-1 = off, else keep the k most likely tokens")
    max_tokens: int = _f(16, "max new tokens per completion")
    stop: list[str] = _f(help="stop strings", factory=list)

    def _validate(self):
        self._check(self.num_generations >= 1, "num_generations", "an int >= 1")
        self._check(self.temperature > 0, "temperature", "a float > 0")
        self._check(0 < self.top_p <= 1, "top_p", "a float in (0, 1]")
        self._check(self.top_k == -1 or self.top_k >= 1, "top_k", "-1 (off) or an int >= 1")
        self._check(self.max_tokens >= 1, "max_tokens", "an int >= 1")
        self._check(all(self.stop), "stop", "a list of non-empty strings")


@dataclass
class EngineArgs(Section):
    _name: ClassVar[str] = "engine"
    block_size: int = _f(16, "KV-cache block size in tokens")
    max_num_seqs: int = _f(256, "max sequences per engine step")
    max_num_batched_tokens: int = _f(2048, "max tokens per engine step")
    enable_prefix_caching: bool = _f(True, "reuse cached prompt blocks (reset after every optimizer step)")
    use_cuda_graphs: bool = _f(True, "capture decode steps in CUDA graphs (ignored on CPU and with "
                                     "trainer.invariant: false)")
    num_blocks: int | None = _f(None, "KV-cache blocks; null = sized automatically")

    def _validate(self):
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            self._check(getattr(self, name) >= 1, name, "an int >= 1")
        self._check(self.num_blocks is None or self.num_blocks >= 1, "num_blocks", "null or an int >= 1")


@dataclass
class TrainerArgs(Section):
    _name: ClassVar[str] = "trainer"
    algo: str = _f("grpo", "RL objective", choices=ALGOS)
    steps: int = _f(50, "optimizer steps (RL steps)")
    prompts_per_step: int = _f(16, "prompts per step; each gets sampling.num_generations completions")
    lr: float = _f(1e-5, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_betas: list[float] = _f(help="AdamW betas [beta1, beta2]", factory=lambda: [0.9, 0.99])
    warmup_steps: int = _f(0, "linear LR warmup steps")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    epsilon_low: float = _f(0.2, "lower clip range")
    epsilon_high: float | None = _f(None, "upper clip range; null = algo default (0.2, dapo: 0.28)")
    beta: float = _f(0.0, "KL penalty to a frozen reference model (0 = no reference model)")
    loss_agg: str | None = _f(None, "loss aggregation; null = algo default (grpo/rloo: sequence, dapo: token, "
                              "dr_grpo: constant = token sum / (completions * max_tokens))",
                              choices=LOSS_AGGS)
    invariant: bool = _f(True, "run the batch-invariant kernels (true on-policy); false = torch default ops")
    strict_onpolicy: bool = _f(False, "stop on the first step with a non-zero sampler/trainer logprob diff")
    tis_cap: float | None = _f(None, "truncated importance-sampling cap; only with invariant: false")
    dynamic_sampling: bool = _f(False, "DAPO: drop groups whose rewards are all equal")
    overlong_filter: bool = _f(False, "DAPO: mask completions cut off by max_tokens")
    sft_warmup_steps: int = _f(0, "supervised warm-up steps on reference answers before RL")
    sft_lr: float = _f(1e-3, "learning rate of the SFT warm-up")
    seed: int = _f(0, "global seed (python/numpy/torch and sampling)")
    save_every: int = _f(0, "checkpoint every N steps (0 = no periodic checkpoints)")
    resume: bool | str = _f(False, "true = resume from <output_dir>/checkpoints/latest; a string = checkpoint path")

    def _validate(self):
        defaults = ALGO_DEFAULTS[self.algo]
        for name in ("epsilon_high", "loss_agg"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        self._check(self.steps >= 0, "steps", "an int >= 0")
        self._check(self.prompts_per_step >= 1, "prompts_per_step", "an int >= 1")
        self._check(self.lr > 0, "lr", "a float > 0")
        self._check(self.weight_decay >= 0, "weight_decay", "a float >= 0")
        self._check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
                    "two floats in [0, 1), e.g. [0.9, 0.99]")
        self._check(self.warmup_steps >= 0, "warmup_steps", "an int >= 0")
        self._check(self.max_grad_norm > 0, "max_grad_norm", "a float > 0")
        self._check(self.epsilon_low >= 0, "epsilon_low", "a float >= 0")
        self._check(self.epsilon_high >= 0, "epsilon_high", "a float >= 0 or null (algo default)")
        self._check(self.beta >= 0, "beta", "a float >= 0")
        self._check(self.tis_cap is None or self.tis_cap > 0, "tis_cap", "null or a float > 0")
        self._check(self.tis_cap is None or not self.invariant, "tis_cap",
                    "null when trainer.invariant is true (sampler and trainer logprobs are equal, no IS needed)")
        self._check(not (self.strict_onpolicy and not self.invariant), "strict_onpolicy",
                    "false when trainer.invariant is false (the default ops are not bitwise on-policy)")
        self._check(self.sft_warmup_steps >= 0, "sft_warmup_steps", "an int >= 0")
        self._check(self.sft_lr > 0, "sft_lr", "a float > 0")
        self._check(self.seed >= 0, "seed", "an int >= 0")
        self._check(self.save_every >= 0, "save_every", "an int >= 0 (0 = no periodic checkpoints)")
        self._check(not isinstance(self.resume, str) or bool(self.resume.strip()), "resume",
                    "true/false or a checkpoint path")
        self._check(self.keep_checkpoints >= 1, "keep_checkpoints", "an int >= 1")
        self._check(self.micro_batch_tokens is None or self.micro_batch_tokens >= 1, "micro_batch_tokens",
                    "null or an int >= 1")
        self._check(self.mini_batches >= 1, "mini_batches", "an int >= 1")
        self._check(self.prompts_per_step % self.mini_batches == 0, "mini_batches",
                    f"a divisor of prompts_per_step ({self.prompts_per_step}): mini-batches hold whole groups")
        self._check(self.num_iterations >= 1, "num_iterations", "an int >= 1")
        rc = self.reduction_chunks
        self._check(rc is None or (rc >= 1 and rc & (rc - 1) == 0 and (self.prompts_per_step // self.mini_batches)
                                   % rc == 0), "reduction_chunks",
                    "null or a power of two dividing the prompts of one mini-batch (prompts_per_step / mini_batches)")

    # trainer helper (issue 8) -- for the coordinator to port into the new config:
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (the newest N); the final policy is always saved")
    # trainer helper (issue 10, "real") -- for the coordinator to port into the new config:
    micro_batch_tokens: int | None = _f(None, "token budget (prompt + completion) of one forward/backward; "
                                        "null = the whole mini-batch at once")
    mini_batches: int = _f(1, "optimizer steps per pass over the rollout batch (whole groups each)")
    num_iterations: int = _f(1, "passes over each rollout batch (PPO epochs); updates = mini_batches * this")
    activation_checkpointing: bool = _f(False, "recompute each decoder layer in the backward (less memory)")
    # dist helper (issue 11) -- for the coordinator to port into the new config:
    reduction_chunks: int | None = _f(None, "gradient reduction chunks per mini-batch (power of two, whole "
                                      "groups; null = world size); equal values give the same bits on any "
                                      "world size dividing it")


@dataclass
class RewardArgs(Section):
    _name: ClassVar[str] = "rewards[]"
    name: str = _f(dataclasses.MISSING, "registered reward name (onpolicy.rewards): embedded, math_answer, format, ...")
    weight: float = _f(1.0, "weight of this reward in the total")

    def _validate(self):
        self._check_nonblank("name", "a registered reward name")


@dataclass
class LoggingArgs(Section):
    _name: ClassVar[str] = "logging"
    output_dir: str = _f("outputs/run", "metrics.jsonl, plots, checkpoints and W&B files go here")
    report_to: list[str] = _f(help="sinks: console and/or wandb (offline without an API key)",
                              factory=lambda: ["console"], choices=("console", "wandb"))
    project: str = _f("onpolicy", "W&B project")
    run_name: str | None = _f(None, "W&B run name / console label")
    log_every: int = _f(1, "console line every N steps (metrics.jsonl gets every step)")
    plot: bool = _f(True, "write PNG plots of metrics.jsonl at the end of the run")

    def _validate(self):
        self._check_nonblank("output_dir", "a directory path")
        self._check(self.log_every >= 1, "log_every", "an int >= 1")


SECTIONS = {"model": ModelArgs, "data": DataArgs, "sampling": SamplingArgs, "engine": EngineArgs,
            "trainer": TrainerArgs, "logging": LoggingArgs}


@dataclass
class ExperimentConfig:
    """One run's whole configuration; sections may be given as dicts (coerced and validated)."""

    model: ModelArgs = field(default_factory=ModelArgs, metadata={"help": "policy model"})
    data: DataArgs = field(default_factory=DataArgs, metadata={"help": "prompt data set"})
    sampling: SamplingArgs = field(default_factory=SamplingArgs, metadata={"help": "rollout sampling"})
    engine: EngineArgs = field(default_factory=EngineArgs, metadata={"help": "inference engine"})
    trainer: TrainerArgs = field(default_factory=TrainerArgs, metadata={"help": "RL algorithm and optimizer"})
    rewards: list[RewardArgs] = field(default_factory=lambda: [RewardArgs(name="embedded")],
                                      metadata={"help": "weighted reward functions"})
    logging: LoggingArgs = field(default_factory=LoggingArgs, metadata={"help": "metrics sinks"})

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            setattr(self, name, coerce(getattr(self, name), cls, name))
        rewards = self.rewards
        if not isinstance(rewards, list) or not rewards:
            raise ConfigError(f"rewards: expected a non-empty list of {{name, weight}} mappings, got {rewards!r}")
        self.rewards = [coerce(r, RewardArgs, f"rewards[{i}]") for i, r in enumerate(rewards)]
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards: duplicate reward names {names}; allowed: each name once")

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
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {str(p)!r}")
    data = yaml.safe_load(p.read_text())
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"--config: {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data or {}


def _parse_value(key: str, text: str) -> Any:
    """A CLI value: raw text for string fields ('null'/'~' = None where allowed), else a YAML scalar/flow list."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    tp = type_hints(cls).get(name) if cls is not None else None
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    optional_str = is_union and set(typing.get_args(tp)) == {str, type(None)}
    if tp is str or optional_str:
        return None if optional_str and text in ("null", "~") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, key: str, value: Any) -> None:
    """Set dotted `key` ('trainer.lr', or 'rewards') in the nested dict `data`, checking the key exists."""
    parts = key.split(".")
    allowed = list(SECTIONS) + ["rewards"]
    if parts[0] not in allowed:
        raise ConfigError(f"--{key}: unknown section {parts[0]!r}; allowed: {', '.join(allowed)}")
    if parts[0] == "rewards":
        if len(parts) != 1:
            raise ConfigError(f"--{key}: set the whole list, e.g. --rewards '[{{name: math_answer}}]'")
        data["rewards"] = value
        return
    cls = SECTIONS[parts[0]]
    if len(parts) != 2 or parts[1] not in {f.name for f in dataclasses.fields(cls)}:
        names = ", ".join(f"--{parts[0]}.{f.name}" for f in dataclasses.fields(cls))
        raise ConfigError(f"--{key}: unknown field; allowed: {names}")
    section = data.setdefault(parts[0], {}) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{parts[0]}: expected a mapping, got {section!r}")
    section[parts[1]] = value
    data[parts[0]] = section


def _split_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]], bool]:
    config_path, overrides, print_config = None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; expected --config FILE or --section.field VALUE")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_") if key in ("print-config",) else key
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = not eq and nxt is not None and not nxt.startswith("--")
        if key == "print_config":
            print_config, i = True, i + 1
            continue
        if key == "config":
            if not eq and not takes_next:
                raise ConfigError("--config: expects a YAML file path")
            config_path, i = (val if eq else nxt), i + (1 if eq else 2)
            continue
        if eq:
            overrides.append((key, _parse_value(key, val)))
            i += 1
        elif takes_next:
            overrides.append((key, _parse_value(key, nxt)))
            i += 2
        else:  # a bare flag: boolean true
            overrides.append((key, True))
            i += 1
    return config_path, overrides, print_config


def help_text() -> str:
    lines = ["usage: [--config FILE.yaml] [--section.field VALUE ...] [--print-config]", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            choices = f.metadata.get("choices")
            extra = f" {{{', '.join(choices)}}}" if choices else ""
            lines.append(f"  --{name}.{f.name}{extra} (default {default!r}): {f.metadata.get('help', '')}")
    lines.append("rewards: --rewards '[{name: NAME, weight: W}, ...]' (default [{name: embedded}])")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, forced: dict[str, Any] | None = None) -> ExperimentConfig:
    """`--config x.yaml`, then CLI overrides, then `forced` (a recipe's fixed keys, e.g. trainer.algo).

    `--print-config` prints the resolved YAML and exits; `-h/--help` prints every field's help and exits.
    An override that contradicts `forced` raises `ConfigError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        raise SystemExit(0)
    config_path, overrides, print_config = _split_cli(argv)
    data = load_yaml(config_path) if config_path else {}
    for key, value in overrides:
        apply_override(data, key, value)
    for key, value in (forced or {}).items():
        given = [v for k, v in overrides if k == key]
        if given and given[-1] != value:
            raise ConfigError(f"--{key}: this recipe fixes {key} = {value!r}; got {given[-1]!r}")
        apply_override(data, key, value)
    cfg = ExperimentConfig.from_dict(data)
    if print_config:
        print(cfg.to_yaml())
        raise SystemExit(0)
    return cfg
