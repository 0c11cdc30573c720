"""User-facing engine types: SamplingParams, EngineConfig, RequestOutput / CompletionOutput.

Validation raises ValueError naming the field and the allowed values; `LLM.generate` calls it for every
request before any compute. Left out: beam search, logit bias, min_tokens, presence/frequency penalties,
top-logprobs lists, per-request LoRA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from onpolicy.config_fields import Section, config_field as _f


# The smallest positive temperature: logits / temperature must stay finite in fp32 for any logits a model gives
# (1e-39, a subnormal, already overflows: pad tokens with NaN logprobs). As vLLM, 0.01; use 0 for greedy.
MIN_TEMPERATURE = 1e-2


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _fail(owner: str, name: str, msg: str) -> None:
    raise ValueError(f"{owner}.{name}: {msg}")


@dataclass
class SamplingParams:
    """How to sample one prompt. temperature 0 is greedy (argmax, lowest id on ties); its reported logprobs are
    taken at temperature 1.0, the same convention the trainer uses; a positive temperature is at least
    MIN_TEMPERATURE. A completion stops on any eos id of the
    engine (tokenizer + generation_config.json; `ignore_eos` skips them all) or of `stop_token_ids`; `stop`
    strings are searched in the text decoded without special tokens and cut from it (the tokens stay), and a
    stop string that is exactly one special token (`<|endoftext|>`) stops on that token (onpolicy.engine.stopping).
    `seed=None` draws a seed from the engine's seeded generator when the request arrives."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    logprobs: bool = True
    ignore_eos: bool = False

    def validate(self) -> None:
        own = "SamplingParams"
        if not _is_int(self.n) or self.n < 1:
            _fail(own, "n", f"must be an int >= 1, got {self.n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (
                t == 0 or (math.isfinite(t) and t >= MIN_TEMPERATURE)):
            _fail(own, "temperature", f"must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g} (smaller ones "
                                      f"overflow the scaled logits), got {t!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            _fail(own, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not (self.top_k == -1 or self.top_k >= 1):
            _fail(own, "top_k", f"must be -1 (off) or an int >= 1, got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            _fail(own, "max_tokens", f"must be an int >= 1, got {self.max_tokens!r}")
        if self.stop is not None:
            if isinstance(self.stop, str):
                self.stop = [self.stop]
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                _fail(own, "stop", f"must be None, a non-empty str or a list of non-empty str, got {self.stop!r}")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, (list, tuple)) or not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
                _fail(own, "stop_token_ids", f"must be None or a list of ints >= 0, got {self.stop_token_ids!r}")
        if self.seed is not None and not _is_int(self.seed):
            _fail(own, "seed", f"must be None or an int, got {self.seed!r}")
        for name in ("logprobs", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                _fail(own, name, f"must be a bool, got {getattr(self, name)!r}")


@dataclass
class EngineConfig(Section):
    """Engine limits; also the experiment config's `engine` section (one definition, validated on construction
    and again by `LLM`). `num_blocks=None` sizes the paged KV cache automatically: enough blocks for
    max_num_seqs sequences of max_position_embeddings tokens, capped by `kv_cache_memory_fraction` of free
    GPU memory (CUDA) or of physical RAM capped at 4 GiB (CPU). Batch-invariant or default ops follow
    `onpolicy.kernels.is_invariant()` at each step (the trainer's `trainer.invariant` switch);
    `use_cuda_graphs` applies to pure-decode steps on CUDA, in either kernel mode (one graph set per mode)."""

    _name: ClassVar[str] = "engine"
    backend: str = _f("native", "sampler: native (onpolicy's engine) or vllm (vLLM's scheduler and paged cache on "
                                "onpolicy's model, kernels and sampler; needs the `vllm` extra)",
                      choices=("native", "vllm"))
    block_size: int = _f(16, "KV-cache block size in tokens", ge=1)
    num_blocks: int | None = _f(None, "KV-cache blocks; null = sized automatically", ge=1)
    max_num_seqs: int = _f(256, "max sequences per engine step", ge=1)
    max_num_batched_tokens: int = _f(2048, "max tokens per engine step", ge=1)
    enable_prefix_caching: bool = _f(True, "reuse cached prompt blocks (reset after every optimizer step)")
    use_cuda_graphs: bool = _f(True, "capture decode steps (forward, LM head, sampling) in CUDA graphs "
                                     "(ignored on CPU)")
    async_scheduling: bool = _f(True, "launch a pure-decode step before reading the previous step's tokens "
                                      "(host work overlaps the GPU; the same outputs as false)")
    kv_cache_memory_fraction: float = _f(0.4, "share of free GPU memory (CPU: of RAM, at most 4 GiB) the "
                                              "automatic num_blocks may use", gt=0, le=1)


@dataclass
class CompletionOutput:
    """One sample. `logprobs[i]` is the logprob of token_ids[i] at the request's temperature (1.0 when
    greedy), computed by `model.token_logprobs` -- the trainer's function; None when params.logprobs=False."""

    index: int
    token_ids: list[int]
    logprobs: torch.Tensor | None
    text: str
    finish_reason: str  # "stop" | "length"


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


def params_per_prompt(prompts, params) -> list:
    """`generate(prompts, params)`'s argument checks (before any compute) -> one SamplingParams per prompt."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts: must be a list of str or of token-id lists, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts: empty list; need at least one prompt")
    if isinstance(prompts[0], int):
        raise ValueError("prompts: got a flat list of ints; wrap one tokenised prompt as [[ids...]]")
    params = SamplingParams() if params is None else params
    if not isinstance(params, (list, tuple)):
        return [params] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"params: list of {len(params)} SamplingParams for {len(prompts)} prompts; lengths must match")
    return list(params)


def checked_engine_args(owner: str, config, seed) -> "EngineConfig":
    """An engine's constructor checks: `config` an EngineConfig (None = defaults), validated again (a field may
    have been assigned since construction); `seed` an int."""
    config = EngineConfig() if config is None else config
    if not isinstance(config, EngineConfig):
        raise ValueError(f"{owner}: config must be an EngineConfig, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{owner}: seed must be an int, got {seed!r}")
    config.validate()
    return config
