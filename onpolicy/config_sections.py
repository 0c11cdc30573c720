"""The run's own config sections, one dataclass each: model, data, sampling, trainer, rewards[] and logging.

Each field is declared with `config_field` (help text, bounds, choices; onpolicy.config_fields); a section's
`_validate` holds only the checks that relate its own fields. Sections owned elsewhere: `engine`
(onpolicy.engine.params.EngineConfig), `lora` (onpolicy.lora.config), `eval` (onpolicy.evaluation), `env`
(onpolicy.envs.config). Checks across sections: onpolicy.config_experiment.ExperimentConfig.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from onpolicy.algorithms import ALGO_DEFAULTS, ALGOS, LOSS_AGGS
from onpolicy.config_fields import ConfigError, Section, config_field, run_dir_problem
from onpolicy.engine.params import MIN_TEMPERATURE

__all__ = ["ModelArgs", "DataArgs", "SamplingArgs", "TrainerArgs", "RewardArgs", "LoggingArgs"]

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
    epsilon_low: float = _f(0.2, "lower clip range (ratio >= 1 - epsilon_low)", ge=0, lt=1)
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
