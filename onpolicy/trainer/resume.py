"""Resuming a run: refuse a checkpoint whose config means a different run, trim metrics.jsonl (loading it:
`Trainer.load`).

`check_resume_config(cfg)` runs before any compute: it compares the config saved with the checkpoint
(`meta.json`) field by field with the current one; any difference outside `MAY_CHANGE` (run length, checkpoint
cadence and contents, logging, engine sizes, device, strictness, micro-batch size, activation checkpointing) is an
error listing every changed field. A checkpoint saved with `trainer.save_only_model` (no optimizer state) is
refused. Checkpoints written without a saved config are resumed with a warning.
`trim_metrics` keeps the rows of metrics.jsonl up to the resumed step and drops a last line cut short by a kill
during a write. Left out: resuming with a changed learning rate on purpose (start a fresh run from the saved
policy instead).
"""
from __future__ import annotations

import json
import os

# Dotted config fields (or section prefixes ending in ".") that may differ between a checkpoint and its resume.
MAY_CHANGE = ("trainer.steps", "trainer.save_every", "trainer.resume", "trainer.strict_onpolicy",
              "trainer.keep_checkpoints", "trainer.save_only_model", "model.device", "logging.", "engine.",
              "trainer.micro_batch_tokens", "trainer.activation_checkpointing",  # memory knobs (e.g. after an OOM)
              "trainer.num_threads", "trainer.sft_cache_dir")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and prefix.count(".") < 1:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for each field present in both that differs and is not in MAY_CHANGE."""
    a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys())
            if a[k] != b[k] and not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_CHANGE)]


def check_resume_config(cfg, strategy=None, log=print) -> None:
    """Raise ValueError when `trainer.resume` names a checkpoint written with a config of different meaning,
    or with another optimizer layout than `strategy` (onpolicy.trainer.parallel; default: replicated, one rank)
    keeps (FSDP2 shards vs replicated)."""
    from onpolicy.trainer import checkpoint

    path = checkpoint.resume_path(cfg)
    if path is None:
        return
    meta = checkpoint.read_meta(path)
    if meta is None or "config" not in meta:
        log(f"warning: {path} holds no saved config; cannot check that it belongs to this run's config")
        return
    if meta.get("model_only"):
        raise ValueError(f"trainer.resume: {path} was saved with trainer.save_only_model (no optimizer state); "
                         "allowed: a checkpoint saved without it, or a fresh run from its policy/ (model.path)")
    from onpolicy.trainer.parallel import Replicated

    (strategy or Replicated()).check_resume_layout(meta, path)
    diffs = config_differences(meta["config"], cfg.to_dict())
    if diffs:
        raise ValueError(f"trainer.resume: {path} was written by a run with a different config ({'; '.join(diffs)}); "
                         "these fields change what the run means. Resume with the checkpoint's values, or start "
                         "a fresh run (trainer.resume: false, or another logging.output_dir)")


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def trim_metrics(cfg, start_step: int, log=print) -> None:
    """Keep only the rows of an existing metrics.jsonl with step <= start_step (a fresh run starts empty, a
    resumed one drops rows logged after its checkpoint), so the file and its plots show one run. A last line
    that does not parse (a kill mid-write) is dropped; an unparsable line before it is an error."""
    path = os.path.join(cfg.logging.output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if start_step == 0:  # a fresh run: nothing of the old file is kept, whatever state it is in
        if lines:
            log(f"{path}: dropping {len(lines)} rows of an earlier run")
        open(path, "w").close()
        return
    rows = [_parse(line) for line in lines]
    if rows and rows[-1] is None:
        log(f"{path}: dropping a truncated last line (the previous run was killed while writing it)")
        lines, rows = lines[:-1], rows[:-1]
    if None in rows:
        raise ValueError(f"{path}: line {rows.index(None) + 1} is not JSON; fix or delete the file to resume")
    keep = [line if line.endswith("\n") else line + "\n" for line, row in zip(lines, rows)
            if row.get("step", 0) <= start_step]
    if len(keep) != len(rows):
        log(f"{path}: dropping {len(rows) - len(keep)} rows of an earlier run (steps > {start_step})")
    with open(path, "w") as f:
        f.writelines(keep)
