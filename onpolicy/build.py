"""Build the parts a run or an evaluation needs from an ExperimentConfig: device, tokenizer, model (with its
generation settings), the rollout engine and reward models; plus the checks that need only the tokenizer.

Used by the trainer's set-up (onpolicy.trainer.setup) and the evaluation (onpolicy.eval_run), which run
`check_context` (model.path, model.tiny, the context budget; config.json only) before building anything.
Left out: hub model ids (model.path is a local directory or "tiny").
"""
from __future__ import annotations

import dataclasses
import os

import torch

from onpolicy.config_fields import ConfigError


def check_context(cfg) -> None:
    """Start-up check, before any model is built: `model.path` is usable (checked before `model.tiny`, so a
    leftover tiny block cannot hide a wrong path) and `data.max_prompt_tokens + sampling.max_tokens` (with an
    environment: `env.max_total_tokens`) fits the model's context (max_position_embeddings of config.json, or of the tiny config), and every
    `sampling.stop_token_ids` is below its vocab_size. Reads config.json only."""
    m = cfg.model
    if m.path == "tiny":
        from onpolicy.model.tiny import tiny_config

        model_config = tiny_config(**m.tiny)
    else:
        if not os.path.isdir(m.path):
            raise ConfigError(f"model.path: {m.path!r} is not a directory; allowed: 'tiny' or a local HF model dir")
        if not os.path.isfile(os.path.join(m.path, "config.json")):
            raise ConfigError(f"model.path: {m.path!r} has no config.json; allowed: 'tiny' or a local HF model dir")
        if m.tiny:
            raise ConfigError(f"model.tiny: overrides only apply with model.path: tiny, and model.path is {m.path!r}; "
                              "allowed here: no tiny block (remove it)")
        from onpolicy.model.loading import load_config

        model_config = load_config(m.path)
    limit, vocab = model_config.max_position_embeddings, model_config.vocab_size
    bad = [t for t in cfg.sampling.stop_token_ids if t >= vocab]
    if bad:
        raise ConfigError(f"sampling.stop_token_ids: got {bad}; allowed: token ids in [0, {vocab}) (the model's "
                          "vocab_size)")
    prompt, new, what = cfg.data.max_prompt_tokens, cfg.sampling.max_tokens, "sampling.max_tokens"
    if cfg.env.name is not None:  # a multi-turn trajectory: every turn and observation after the prompt
        new, what = cfg.env.max_total_tokens, "env.max_total_tokens"
    if prompt + new > limit:
        raise ConfigError(f"data.max_prompt_tokens ({prompt}) + {what} ({new}) = {prompt + new} exceeds "
                          f"the model's context max_position_embeddings={limit}; allowed: a sum <= {limit}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device: 'cuda' requested but CUDA is not available; allowed here: auto, cpu")
    return torch.device(name)


def build_tokenizer(cfg):
    """The tokenizer alone (cheap), so data can be checked before any model is built (`model.path` was checked
    by `check_context`)."""
    if cfg.model.path == "tiny":
        from onpolicy.model.tiny import TINY_CHAT_TEMPLATE, CharTokenizer, tiny_chars

        return CharTokenizer(tiny_chars(cfg.model.tiny.get("vocab_size")), chat_template=TINY_CHAT_TEMPLATE)
    from onpolicy.model import load_tokenizer

    return load_tokenizer(cfg.model.path)


def check_stop_strings(cfg, tokenizer) -> None:
    """Refuse a `sampling.stop` string the engine could not match (onpolicy.engine.stopping); needs the tokenizer
    only, so it runs before any model is built."""
    from onpolicy.engine import SamplingParams
    from onpolicy.engine.stopping import special_tokens, stop_rule

    stop_rule(SamplingParams(stop=list(cfg.sampling.stop) or None), [], special_tokens(tokenizer), "sampling")


def attach_generation_settings(model, tokenizer, log=print) -> None:
    """`model.generation_settings` (generation_config.json and config.json's token ids, read by load_pretrained)
    completed from the tokenizer -- the tiny model gets its bos/eos/pad -- so the engine stops on every eos id
    and saved policies carry them; logs what the checkpoint's generation config says."""
    from onpolicy.model.generation_config import GenerationSettings

    settings = getattr(model, "generation_settings", None) or GenerationSettings()
    model.generation_settings = settings.complete_from_tokenizer(tokenizer)
    log(model.generation_settings.describe(tokenizer))


def warn_unknown_chars(cfg, rows: list[dict], log) -> None:
    """With the tiny model: one warning when prompts or answers hold characters its tokenizer maps to <unk>."""
    if cfg.model.path != "tiny":
        return
    from onpolicy.model.tiny import tiny_chars, unknown_chars_warning

    columns = {"prompt": [r["prompt"] for r in rows], "answer": [r.get("answer") or "" for r in rows]}
    message = unknown_chars_warning(columns, tiny_chars(cfg.model.tiny.get("vocab_size")))
    if message:
        log(f"warning: {message}")


def build_model(cfg, device: torch.device, seed: int):
    """The policy: the built-in tiny model ("tiny", weights from `seed`) or a local HF directory (`model.path`
    and `model.tiny` were checked by `check_context`)."""
    if cfg.model.path == "tiny":
        from onpolicy.model.tiny import build_tiny

        model = build_tiny(seed=seed, dtype=cfg.model.dtype, **cfg.model.tiny)[0].to(device)
    else:
        from onpolicy.model import load_pretrained

        model, _ = load_pretrained(cfg.model.path, dtype=cfg.model.dtype, device=device)
    from onpolicy.model.moe import freeze_router, moe_layers

    if cfg.model.router_aux_loss_coef > 0 and not moe_layers(model):
        raise ValueError("model.router_aux_loss_coef: > 0 needs a model with MoE layers; allowed: 0.0")
    if cfg.model.freeze_router:
        freeze_router(model)
    return model


def build_sampler(cfg, model, tokenizer, device: torch.device, world_size: int = 1, sharded: bool = False):
    """The rollout engine `engine.backend` names: onpolicy's LLM (its KV cache sized for this rank's share of the
    prompts beside the trainer's needs, `memory.kv_cache_blocks`; `sharded`: FSDP2), or vLLM on the same model (a weight copy;
    vLLM sizes its own cache)."""
    if cfg.engine.backend == "vllm":
        from onpolicy.engine.vllm_backend import VllmLLM

        return VllmLLM(model, tokenizer, cfg.engine, seed=cfg.trainer.seed)
    from onpolicy.engine import LLM
    from onpolicy.trainer.memory import kv_cache_blocks

    engine = dataclasses.replace(cfg.engine, num_blocks=kv_cache_blocks(cfg, model, device, world_size=world_size,
                                                                        sharded=sharded))
    return LLM(model, tokenizer, engine, seed=cfg.trainer.seed)


def load_reward_models(rewards: list, device: torch.device, log=print) -> None:
    """Load the weights of every reward model among the resolved `rewards` onto `device` (before compute)."""
    from onpolicy.rewards.reward_model import RewardModel

    for r in rewards:
        if isinstance(r.fn, RewardModel):
            r.fn.to(device).load()
            log(f"reward {r.label!r}: reward model {r.fn.path} scored on {r.fn.backend}")
