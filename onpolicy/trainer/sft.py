"""Supervised warm-start: teacher-forced next-token loss on correct (prompt, answer) pairs.

The loss is -mean over completion tokens of the model's own training forward (`sequence_logprobs`, the packed
varlen path the RL trainer uses), so SFT exercises exactly the kernels RL does. Batches are drawn from the
examples with a seeded RNG; the result is cached under `cache_dir/sft-<hash>` (hash of the model config, the
initial weights, the data and every SFT setting), so a second run with the same settings loads it instead.
Left out: packing several examples per row, LR schedules, evaluation during SFT, LoRA.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time

import torch


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sft_cache_key(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], **settings) -> str:
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    cfg_dict = cfg.__dict__ if cfg is not None and hasattr(cfg, "__dict__") else {}
    h.update(json.dumps({"config": cfg_dict, "settings": settings}, sort_keys=True, default=str).encode())
    h.update(weights_digest(model).encode())
    h.update(json.dumps([prompts, completions]).encode())
    return h.hexdigest()[:16]


def _check(prompts, completions, steps, lr, batch_size):
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"sft: prompts ({len(prompts)}) and completions ({len(completions)}) must be equal-length "
                         "and non-empty")
    if any(len(c) == 0 for c in completions):
        raise ValueError("sft: every completion needs at least one token")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"trainer.sft_warmup_steps must be an int >= 0; got {steps!r}")
    if not lr > 0:
        raise ValueError(f"trainer.sft_lr must be > 0; got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sft batch_size must be an int >= 1; got {batch_size!r}")


def sft_warmup(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], *, steps: int,
               lr: float = 1e-3, batch_size: int = 32, seed: int = 0, cache_dir: str | None = None,
               log=print) -> dict:
    """Train `model` in place for `steps` steps; returns {"sft/loss_first", "sft/loss_last", "sft/cached", ...}."""
    _check(prompts, completions, steps, lr, batch_size)
    if steps == 0:
        return {"sft/steps": 0, "sft/cached": False}
    from onpolicy.model import sequence_logprobs

    path = None
    if cache_dir is not None:
        key = sft_cache_key(model, prompts, completions, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        path = os.path.join(cache_dir, f"sft-{key}")
        weights = os.path.join(path, "model.pt")
        if os.path.exists(weights):
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            with open(os.path.join(path, "stats.json")) as f:
                stats = json.load(f)
            log(f"sft: loaded cached warm-start from {path}")
            return {**stats, "sft/cached": True}

    t0 = time.perf_counter()
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    model.train()
    losses = []
    for step in range(steps):
        idx = [rng.randrange(len(prompts)) for _ in range(batch_size)]
        lps = sequence_logprobs(model, [prompts[i] for i in idx], [completions[i] for i in idx], temperature=1.0)
        flat = torch.cat(lps)
        loss = -flat.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step == 0 or (step + 1) % max(1, steps // 5) == 0:
            log(f"sft step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    opt.zero_grad(set_to_none=True)
    stats = {"sft/steps": steps, "sft/loss_first": losses[0], "sft/loss_last": losses[-1],
             "sft/time": time.perf_counter() - t0}
    if path is not None:
        os.makedirs(path, exist_ok=True)
        tmp = os.path.join(path, f"model.pt.tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        with open(os.path.join(path, "stats.json"), "w") as f:
            json.dump(stats, f)
        os.replace(tmp, os.path.join(path, "model.pt"))
    return {**stats, "sft/cached": False}
