"""A checkpoint's generation settings: `generation_config.json` and the special-token ids of `config.json`.

`read_generation_settings(path)` reads both from a local HF directory; `load_pretrained` attaches the result to
the model as `model.generation_settings` and `save_pretrained` writes it back, so a saved policy reloads with
`transformers.GenerationConfig.from_pretrained` (and vLLM, which reads the same file) as the original.
`complete_from_tokenizer` fills in what a checkpoint without these files lacks (bos/eos/pad of the tokenizer).

What the engine uses: every id of `eos_token_id` (an int or a list: Qwen2.5/Qwen3 list `<|im_end|>` and
`<|endoftext|>`, Llama-3.x-Instruct three ids) plus the tokenizer's eos ends a completion (`eos_token_ids`).

Sampling defaults (temperature, top_p, top_k, min_p, repetition_penalty, do_sample) are read but NOT applied.
vLLM applies them, but only as defaults: its `LLM.generate` without SamplingParams and its OpenAI server for
fields a request leaves unset. TRL's GRPOTrainer always passes its own temperature/top_p/top_k (GRPOConfig's,
1.0 / 1.0 / off by default) to both generate backends, so a checkpoint's defaults never reach RL sampling there.
We follow TRL: the RL objective is defined by `sampling.*`, and logprobs are taken at sampling.temperature, so
a setting that silently changed it would change the objective. `describe` names what was not applied (logged
at start-up). Left out: `repetition_penalty` and the other logits processors (not implemented by the engine).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

GENERATION_CONFIG_FILE = "generation_config.json"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
SAMPLING_DEFAULT_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _check_ids(value, where: str) -> None:
    ids = value if isinstance(value, list) else [value]
    if value is None:
        return
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{where}: must be null, an int >= 0 or a non-empty list of them, got {value!r}")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@dataclass
class GenerationSettings:
    """`generation_config`: the generation_config.json dict as read (None: the checkpoint has none);
    `token_ids`: the bos/eos/pad ids of config.json that are set."""

    generation_config: dict | None = None
    token_ids: dict = field(default_factory=dict)

    def eos_token_ids(self, tokenizer=None) -> list[int]:
        """Every id that ends a completion: generation_config's eos ids (else config.json's), then the
        tokenizer's eos when not among them (TRL's order)."""
        source = self.generation_config if self.generation_config and "eos_token_id" in self.generation_config \
            else self.token_ids
        ids = _as_list(source.get("eos_token_id"))
        tok_eos = getattr(tokenizer, "eos_token_id", None)
        if tok_eos is not None and tok_eos not in ids:
            ids = [tok_eos, *ids]
        return ids

    def complete_from_tokenizer(self, tokenizer) -> "GenerationSettings":
        """A copy where ids config.json lacks come from generation_config.json, else the tokenizer (its
        bos/eos/pad token ids); a checkpoint without
        generation_config.json gets one holding those ids (what transformers builds from a model config)."""
        ids = dict(self.token_ids)
        for key in TOKEN_ID_KEYS:
            value = (self.generation_config or {}).get(key)
            value = getattr(tokenizer, key, None) if value is None else value
            if key not in ids and value is not None:
                ids[key] = value
        gen = dict(self.generation_config) if self.generation_config is not None else dict(ids)
        return GenerationSettings(generation_config=gen, token_ids=ids)

    def describe(self, tokenizer=None) -> str:
        """One line for the start-up log: the eos ids and the sampling defaults that are not applied."""
        gen = self.generation_config or {}
        defaults = {k: gen[k] for k in SAMPLING_DEFAULT_KEYS if gen.get(k) is not None}
        line = f"generation: completions stop on eos ids {self.eos_token_ids(tokenizer)}"
        if defaults:
            shown = ", ".join(f"{k}={v}" for k, v in defaults.items())
            line += (f"; the checkpoint's {GENERATION_CONFIG_FILE} sampling defaults ({shown}) are not applied: "
                     "sampling.* sets how rollouts are sampled")
        return line


def read_generation_settings(path: str) -> GenerationSettings:
    """Read generation_config.json (when present) and config.json's bos/eos/pad ids from a local HF directory."""
    settings = GenerationSettings()
    cfg_file = os.path.join(path, "config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            hf = json.load(f)
        for key in TOKEN_ID_KEYS:
            _check_ids(hf.get(key), f"config.json: {key}")
            if hf.get(key) is not None:
                settings.token_ids[key] = hf[key]
    gen_file = os.path.join(path, GENERATION_CONFIG_FILE)
    if os.path.isfile(gen_file):
        try:
            with open(gen_file) as f:
                gen = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{GENERATION_CONFIG_FILE}: invalid JSON in {path!r} ({e.msg} at line {e.lineno})"
                             ) from None
        if not isinstance(gen, dict):
            raise ValueError(f"{GENERATION_CONFIG_FILE}: must hold a JSON object, got {type(gen).__name__}")
        for key in TOKEN_ID_KEYS:
            _check_ids(gen.get(key), f"{GENERATION_CONFIG_FILE}: {key}")
        settings.generation_config = gen
    return settings


def write_generation_settings(settings: GenerationSettings | None, path: str, hf_config: dict) -> None:
    """Put the bos/eos/pad ids into `hf_config` (the config.json dict about to be written) and write
    generation_config.json into `path` when there is one. Nothing happens for `settings=None`."""
    if settings is None:
        return
    hf_config.update(settings.token_ids)
    if settings.generation_config is not None:
        with open(os.path.join(path, GENERATION_CONFIG_FILE), "w") as f:
            json.dump(settings.generation_config, f, indent=2)
