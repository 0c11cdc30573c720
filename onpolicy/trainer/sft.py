"""Supervised warm-start: teacher-forced next-token loss on correct (prompt, answer) pairs.

The loss is -mean over completion tokens of the model's own training forward (`sequence_logprobs`, the packed
varlen path the RL trainer uses), so SFT exercises exactly the kernels RL does. Batches are drawn from the
examples with a seeded RNG; the result is cached under `cache_dir/sft-<hash>` (hash of the model config, the
initial weights, the data, every SFT setting and `numerics_fingerprint`: torch build, CPU capability, device,
kernel/model source), so a second run with the same settings loads it instead. Thread-count free: the loss
sum is a fixed-order reduction (`onpolicy.trainer.reductions.fixed_sum`).
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


# Source files whose code decides the warm-start's bits (kernels, model, this loop and its reductions).
_SOURCES = ("onpolicy.kernels", "onpolicy.model", "onpolicy.trainer.sft", "onpolicy.trainer.reductions")


def numerics_fingerprint(device: torch.device) -> dict:
    """What a trained weight's bits depend on besides the config, data and seed: torch build, CPU kernel set
    (MKL picks its code path by CPU capability), device type, and a hash of the code in `_SOURCES`. Not the
    torch thread count: every CPU op is thread invariant (tests/invariance/test_thread_invariance.py)."""
    import importlib
    from pathlib import Path

    h = hashlib.sha256()
    for name in _SOURCES:
        mod = importlib.import_module(name)
        path = Path(mod.__file__)
        files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": torch.device(device).type, "cuda": torch.version.cuda, "source": h.hexdigest()}


def sft_cache_key(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], **settings) -> str:
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    cfg_dict = cfg.__dict__ if cfg is not None and hasattr(cfg, "__dict__") else {}
    device = next(model.parameters()).device
    h.update(json.dumps({"config": cfg_dict, "settings": settings, "numerics": numerics_fingerprint(device)},
                        sort_keys=True, default=str).encode())
    h.update(weights_digest(model).encode())
    h.update(json.dumps([prompts, completions]).encode())
    return h.hexdigest()[:16]


def _check(prompts, completions, batch_size):
    """The examples and the batch size; `steps` and `lr` come from the trainer section, checked at load."""
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"sft: prompts ({len(prompts)}) and completions ({len(completions)}) must be equal-length "
                         "and non-empty")
    if any(len(c) == 0 for c in completions):
        raise ValueError("sft: every completion needs at least one token")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"sft batch_size must be an int >= 1; got {batch_size!r}")


def sft_warmup(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], *, steps: int,
               lr: float = 1e-3, batch_size: int = 32, seed: int = 0, cache_dir: str | None = None,
               log=print, on_step=None) -> dict:
    """Train `model` in place for `steps` steps; returns {"sft/loss_first", "sft/loss_last", "sft/cached", ...}.
    `on_step()` (progress bar, thread count) runs after each step."""
    _check(prompts, completions, batch_size)
    if steps == 0:
        return {"sft/steps": 0, "sft/cached": False}
    from onpolicy.model import sequence_logprobs
    from onpolicy.trainer.reductions import fixed_sum

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
        loss = -fixed_sum(flat) / flat.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step == 0 or (step + 1) % max(1, steps // 5) == 0:
            log(f"sft step {step + 1}/{steps}: loss {losses[-1]:.4f}")
        if on_step is not None:
            on_step()
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
