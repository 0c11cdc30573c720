"""Experiment configuration: one dataclass per section (the engine's own `EngineConfig` is the `engine`
section), YAML `--config` plus dotted CLI overrides (`onpolicy.config_cli`), typed fields with declared bounds
(`onpolicy.config_fields`: `_f(16, "help", ge=1)`); a section's `_validate` holds only the checks that relate
fields. The start-up check that needs the model's config.json is the model builder's (`build.check_context`).

Why no library (evaluated: jsonargparse 4.53, tyro 1.0, omegaconf 2.4; TRL's `TrlParser` is flat -- `--lr`, not
`--trainer.lr`): none is on the H100 image, so any would be a new core dependency carried as a wheel
(tyro also pulls typeguard, docstring-parser, typing-extensions); none gives the one-line errors we promise --
jsonargparse: two lines ('Parser key "trainer.steps":' / 'Not of type PositiveInt: 0 does not conform to
restriction v>0') and 'unrecognized arguments: --trainer.nope 1' without the allowed names; tyro: a 9-line
boxed message; omegaconf: four lines (full_key, reference_type, ...), no bounds or choices, and `trainer.lr=x`
overrides rather than `--trainer.lr x`. The cross-field checks (tis_cap / strict_onpolicy vs invariant,
per-algorithm defaults, unique reward names) would stay ours with any of them. Ours is ~630 lines over three
modules with PyYAML as its only dependency.

Errors: unknown keys and bad values raise `ConfigError` (a `ValueError`) naming the dotted field and the
allowed values, before any compute. Left out: environment-variable overrides, per-element CLI edits of the
`rewards` list (pass the whole list: `--rewards '[{name: math_answer}, {name: format, weight: 0.1}]'`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from onpolicy.config_cli import apply_override, help_text, load_yaml, split_cli
from onpolicy.config_fields import ConfigError, Section, coerce, config_field, run_dir_problem
from onpolicy.engine.params import MIN_TEMPERATURE, EngineConfig
from onpolicy.envs.config import EnvArgs, check_env_fields
from onpolicy.evaluation import EvalArgs
from onpolicy.algorithms import ALGO_DEFAULTS, ALGOS, LOSS_AGGS, MIN_GENERATIONS
from onpolicy.lora.config import LoraArgs

__all__ = ["ConfigError", "ExperimentConfig", "ModelArgs", "DataArgs", "SamplingArgs", "EngineConfig", "TrainerArgs",
           "RewardArgs", "EvalArgs", "EnvArgs", "LoggingArgs", "LoraArgs", "SECTIONS", "ALGOS", "ALGO_DEFAULTS",
           "LOSS_AGGS", "parse_args", "check_rewards"]

_f = config_field


@dataclass
class ModelArgs(Section):
    _name: ClassVar[str] = "model"
    path: str = _f("tiny", "'tiny' = built-in tiny Qwen3 with CharTokenizer; otherwise a local HF model directory",
                   nonblank=True, allowed="'tiny' or a model directory")
    dtype: str = _f("float32", "parameter/compute dtype", choices=("float32", "bfloat16"))
    device: str = _f("auto", "'auto' = cuda when available, else cpu", choices=("auto", "cpu", "cuda"))
    tiny: dict = _f(help="overrides for the tiny model config (hidden_size, num_hidden_layers, ...); "
                         "only with path: tiny", factory=dict)
    freeze_router: bool = _f(False, "MoE models: keep every sparse layer's router (gate) weights fixed in training")
    router_aux_loss_coef: float = _f(0.0, "MoE models: weight of transformers' load-balancing loss added to the "
                                     "training loss (0 = off; config.json's value is not used)", ge=0)

    def _validate(self):
        if "dtype" in self.tiny:
            raise ConfigError("model.tiny.dtype: set the dtype with model.dtype (float32 | bfloat16) instead")


@dataclass
class DataArgs(Section):
    _name: ClassVar[str] = "data"
    dataset: str = _f("embedded:arith", "'embedded:<task>' or a local json/jsonl/parquet/csv file or save_to_disk dir",
                      nonblank=True, allowed="'embedded:<task>' or a local path")
    split: str = _f("train", "split of a save_to_disk DatasetDict or a data directory (single files are one split)")
    prompt_column: str = _f("prompt", "column holding the prompt: text, or chat messages (a list of {role, content}, "
                                      "rendered with the tokenizer's chat template)", nonblank=True)
    answer_column: str = _f("answer", "column holding the reference answer (passed to rewards as `answer`)",
                            nonblank=True)
    chat_template: bool = _f(False, "wrap text prompts as one user message and render them with the tokenizer's chat "
                                    "template (generation prompt added); chat-message prompts are always rendered")
    system_prompt: str | None = _f(None, "system message put first in every prompt rendered with the chat template "
                                         "(rows that hold their own system message are refused: one source per run)")
    chat_template_kwargs: dict = _f(help="extra arguments of tokenizer.apply_chat_template, e.g. "
                                         "{enable_thinking: false}; only for prompts rendered with the chat template",
                                    factory=dict)
    max_prompt_tokens: int = _f(128, "prompts longer than this (in tokens) are dropped with a warning", ge=1)
    num_examples: int | None = _f(None, "keep only the first N source rows (None = all)", ge=1)
    shuffle_seed: int = _f(0, "seed of the per-epoch prompt order")
    eval_dataset: str | None = _f(None, "held-out set of the evaluation (recipes/eval.py, trainer.eval_every), in "
                                        "the form of `dataset`; null = the embedded task's held-out split (a "
                                        "different seed, training prompts removed)")
    eval_split: str = _f("test", "split of eval_dataset for a save_to_disk DatasetDict or a data directory")

    def _validate(self):
        if self.dataset.startswith("embedded:"):
            self._check(bool(self.dataset.split(":", 1)[1]), "dataset", "'embedded:<task>' with a task name")
        from onpolicy.chat import chat_template_kwargs_ok

        self._check(chat_template_kwargs_ok(self.chat_template_kwargs), "chat_template_kwargs",
                    "a mapping of template variable names to values, e.g. {enable_thinking: false} (not tokenize, "
                    "add_generation_prompt or other arguments onpolicy sets)")


@dataclass
class SamplingArgs(Section):
    _name: ClassVar[str] = "sampling"
    num_generations: int = _f(8, "completions per prompt (G, the group size)", ge=1)
    temperature: float = _f(1.0, "sampling temperature; logprobs are taken at this temperature",
                            ge=MIN_TEMPERATURE)
    top_p: float = _f(1.0, "nucleus sampling mass, in (0, 1]", gt=0, le=1)
    top_k: int = _f(-1, "-1 = off, else keep the k most likely tokens", ge=-1, allowed="-1 (off) or an int >= 1")
    max_tokens: int = _f(16, "max new tokens per completion", ge=1)
    stop: list[str] = _f(help="stop strings, searched in the completion text decoded without special tokens; a "
                              "string that is exactly one special token (e.g. '<|endoftext|>') stops on that token",
                         factory=list)
    stop_token_ids: list[int] = _f(help="token ids that end a completion, besides every eos id of the tokenizer and "
                                        "the model's generation_config.json", factory=list)

    def _validate(self):
        self._check(self.top_k != 0, "top_k", "-1 (off) or an int >= 1")
        self._check(all(self.stop), "stop", "a list of non-empty strings")
        self._check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids",
                    "a list of token ids >= 0 (and below the model's vocab_size)")


@dataclass
class TrainerArgs(Section):
    _name: ClassVar[str] = "trainer"
    algo: str = _f("grpo", "RL objective", choices=ALGOS)
    steps: int = _f(50, "optimizer steps (RL steps)", ge=1)
    prompts_per_step: int = _f(16, "prompts per step; each gets sampling.num_generations completions", ge=1)
    lr: float = _f(1e-5, "AdamW learning rate", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", ge=0)
    adam_betas: list[float] = _f(help="AdamW betas [beta1, beta2]", factory=lambda: [0.9, 0.99])
    warmup_steps: int = _f(0, "linear LR warmup steps", ge=0)
    max_grad_norm: float = _f(1.0, "gradient clipping norm", gt=0)
    epsilon_low: float = _f(0.2, "lower clip range", ge=0)
    epsilon_high: float | None = _f(None, "upper clip range; null = algo default (0.2, dapo: 0.28)", ge=0)
    beta: float = _f(0.0, "KL penalty to a frozen reference model (0 = no reference model)", ge=0)
    loss_agg: str | None = _f(None, "loss aggregation; null = algo default (grpo/rloo: sequence, dapo: token, "
                              "dr_grpo: constant = token sum / (completions * max_tokens))",
                              choices=LOSS_AGGS)
    invariant: bool = _f(True, "run the batch-invariant kernels (true on-policy); false = cuBLAS / SDPA "
                        "(the non-invariant stack)")
    strict_onpolicy: bool | None = _f(None, "stop on the first step with a non-zero sampler/trainer logprob diff; "
                                      "null = the value of trainer.invariant")
    tis_cap: float | None = _f(None, "truncated importance-sampling cap; only with invariant: false", gt=0)
    dynamic_sampling: bool = _f(False, "DAPO: drop groups whose rewards are all equal")
    overlong_filter: bool = _f(False, "DAPO: mask completions cut off by max_tokens")
    sft_warmup_steps: int = _f(0, "supervised warm-up steps on reference answers before RL", ge=0)
    sft_lr: float = _f(1e-3, "learning rate of the SFT warm-up", gt=0)
    sft_cache_dir: str | None = _f(None, "where the SFT warm-start result is cached (keyed by model, data and "
                                   "settings); null = <logging.output_dir>/cache, inside the run", nonblank=True)
    seed: int = _f(0, "global seed (python/numpy/torch and sampling)", ge=0)
    num_threads: int | str = _f("auto", "torch CPU threads: 'auto' = the cores other programs leave free (of this "
                                "process's share), re-checked every step; 'share' = the share, fixed; N = N",
                                allowed="'share', 'auto' or an int >= 1")
    eval_every: int = _f(0, "evaluate on the held-out set (the eval section) every N steps and log eval/* "
                         "(0 = off)", ge=0)
    save_every: int = _f(0, "checkpoint every N steps (0 = no periodic checkpoints)", ge=0)
    save_only_model: bool = _f(False, "checkpoints hold the policy and data position only, no optimizer state "
                               "(smaller and faster; such a checkpoint cannot be resumed)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (the newest N); the final policy is always saved", ge=1)
    micro_batch_tokens: int | None = _f(None, "token budget (prompt + completion) of one forward/backward; "
                                        "null = the whole mini-batch at once", ge=1)
    mini_batches: int = _f(1, "optimizer steps per pass over the rollout batch (whole groups each)", ge=1)
    num_iterations: int = _f(1, "passes over each rollout batch (PPO epochs); updates = mini_batches * this", ge=1)
    activation_checkpointing: bool = _f(False, "recompute each decoder layer in the backward (less memory)")
    reduction_chunks: int | None = _f(None, "gradient reduction chunks per mini-batch (power of two, whole groups; "
                                      "null = world size); equal values give the same bits on any world size "
                                      "dividing it", ge=1)
    grad_reduction: str = _f("tree", "cross-rank gradient sum (data parallel): 'tree' = fixed order, the same bits "
                             "run after run and on any world size; 'all_reduce' = the backend's all_reduce "
                             "(faster, order not fixed; for comparison)", choices=("tree", "all_reduce"))
    resume: bool | str = _f(False, "true = resume from <output_dir>/checkpoints/latest; a string = checkpoint path")

    def _validate(self):
        defaults = ALGO_DEFAULTS[self.algo]
        for name in ("epsilon_high", "loss_agg"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        self._check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
                    "two floats in [0, 1), e.g. [0.9, 0.99]")
        self._check(self.tis_cap is None or not self.invariant, "tis_cap",
                    "null when trainer.invariant is true (sampler and trainer logprobs are equal, no IS needed)")
        if self.strict_onpolicy is None:
            object.__setattr__(self, "strict_onpolicy", self.invariant)
        self._check(not (self.strict_onpolicy and not self.invariant), "strict_onpolicy",
                    "false or null when trainer.invariant is false (the non-invariant ops are not bitwise on-policy: "
                    "a strict run would stop at step 1)")
        self._check(self.num_threads in ("share", "auto") or (isinstance(self.num_threads, int)
                                                                and self.num_threads >= 1),
                    "num_threads", "'share', 'auto' or an int >= 1")
        self._check(not isinstance(self.resume, str) or bool(self.resume.strip()), "resume",
                    "true/false or a checkpoint path")
        self._check(self.prompts_per_step % self.mini_batches == 0, "mini_batches",
                    f"a divisor of prompts_per_step ({self.prompts_per_step}): mini-batches hold whole groups")
        rc = self.reduction_chunks
        self._check(rc is None or (rc & (rc - 1) == 0 and (self.prompts_per_step // self.mini_batches) % rc == 0),
                    "reduction_chunks",
                    "null or a power of two dividing the prompts of one mini-batch (prompts_per_step / mini_batches)")


@dataclass
class RewardArgs(Section):
    """One reward: `name` (a registered reward or an import path) or `model` (a reward-model directory)."""

    _name: ClassVar[str] = "rewards[]"
    name: str | None = _f(None, "a registered reward (embedded, math_answer, math_answer_lenient, format) or an "
                          "import path 'package.module:function' (on PYTHONPATH or next to the config file)",
                          nonblank=True, allowed="a registered reward name or 'package.module:function'")
    weight: float = _f(1.0, "weight of this reward in the total")
    model: str | None = _f(None, "a local HF *ForSequenceClassification directory scored as the reward "
                           "(instead of name)", nonblank=True, allowed="a reward-model directory")

    def _validate(self):
        self._check((self.name is None) != (self.model is None), "name",
                    "exactly one of name (a reward function) and model (a reward-model directory)")

    @property
    def key(self) -> str:
        return self.name if self.name is not None else f"model:{self.model}"


@dataclass
class LoggingArgs(Section):
    _name: ClassVar[str] = "logging"
    output_dir: str = _f("outputs/run", "metrics.jsonl, plots, checkpoints and W&B files go here", nonblank=True,
                         allowed="a directory path")
    report_to: list[str] = _f(help="sinks: console and/or wandb (offline without an API key)",
                              factory=lambda: ["console"], choices=("console", "wandb"))
    project: str = _f("onpolicy", "W&B project")
    run_name: str | None = _f(None, "W&B run name / console label")
    log_every: int = _f(1, "console line every N steps (metrics.jsonl gets every step)", ge=1)
    log_samples_every: int = _f(10, "every N steps the step's completions go to samples.jsonl (and a W&B table), "
                                "a few to the console; 0 = never", ge=0)
    num_samples: int = _f(4, "completions printed on the console at a sample step (one per prompt)", ge=0)
    progress_bar: bool = _f(True, "a progress bar with ETA on stderr (only when stderr is a terminal)")
    plot: bool = _f(True, "write PNG plots of metrics.jsonl at the end of the run")
    overwrite: bool = _f(False, "a fresh run may delete an earlier run's results (metrics, checkpoints, plots) in "
                         "output_dir; false = such a directory is an error (resume it or pick another)")

    def _validate(self):
        why = run_dir_problem(self.output_dir)
        self._check(why is None, "output_dir", why or "")


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
