"""Atomic training checkpoints: `save_checkpoint` / `load_checkpoint`, keep-last-K, a `latest` pointer.

Layout of `<ckpt_dir>/step-N/`: `policy/` (an HF directory written by `onpolicy.model.save_pretrained`, plus
the tokenizer when given: loadable by transformers and by `onpolicy.model.load_pretrained`),
`trainer_state.safetensors` + `trainer_state.json` (step, optimizer and scheduler state dicts,
`onpolicy.determinism.rng_state()`, `extra`: e.g. the prompt iterator state that `train()` saves; written by
`onpolicy.trainer.safe_state`, formats that cannot run code when read), when given `meta.json` (small JSON facts:
`train()` stores the run's config there), and `manifest.json` (sha256 and size of every other file, written
last). Loading verifies the manifest first and names any file that differs. A step directory is complete when it
has its manifest. Atomicity: everything is written to `tmp-step-N/`, every file and the directory are fsynced,
then `os.replace` renames it to `step-N/`, then the `latest` file is rewritten through `latest.tmp` +
`os.replace`. A crash at any point leaves the previous checkpoint intact; stale `tmp-step-*` directories are
removed by the next save. A checkpoint root resolves to the step `latest` names when that step is complete,
else to the newest complete step. Keep-last-K removes only steps older than the one just saved. A checkpoint of
the older format (`trainer_state.pt`, a pickle) is refused, never unpickled. Sharded state (FSDP2,
onpolicy.trainer.fsdp): every rank writes its shard into the directory `prepare_tmp` made, then
`save_checkpoint(..., prepared=True)` adds the rest and commits it atomically as above. Left out: async saving,
remote storage, converting older-format checkpoints.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onpolicy.trainer.safe_state import MANIFEST, load_tree, save_tree, verify_manifest, write_manifest

LATEST = "latest"
STATE_STEM = "trainer_state"  # trainer_state.safetensors + trainer_state.json
OLD_STATE_FILE = "trainer_state.pt"  # the older, pickled format: refused
META_FILE = "meta.json"
POLICY_DIR = "policy"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Completed checkpoints `(step, path)` in `ckpt_dir`, oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(out)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def prepare_tmp(ckpt_dir: str | Path, step: int) -> Path:
    """Remove stale `tmp-step-*` directories and create `tmp-step-<step>` (empty) for state that several
    processes write before `save_checkpoint(..., prepared=True)` commits it; returns its path."""
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"tmp-step-{step}"
    tmp.mkdir()
    return tmp


def save_checkpoint(ckpt_dir: str | Path, step: int, model, optimizer=None, scheduler=None,
                    extra: dict | None = None, keep: int = 2, tokenizer=None, meta: dict | None = None,
                    prepared: bool = False, rng: dict | None = None) -> Path:
    """Write `<ckpt_dir>/step-<step>` atomically, point `latest` at it, keep the newest `keep` of the steps up to
    this one; returns its path. `prepared`: `prepare_tmp(ckpt_dir, step)` made the temporary directory and
    others wrote into it: keep it. `rng`: the RNG states to store (default: the current ones)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"save_checkpoint: keep must be an int >= 1, got {keep!r}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"save_checkpoint: extra must be a dict or None, got {type(extra).__name__}")
    from onpolicy import determinism
    from onpolicy.lora.training import save_checkpoint_adapter
    from onpolicy.model import save_pretrained

    root = Path(ckpt_dir)
    name = f"step-{step}"
    tmp, final = root / f"tmp-{name}", root / name
    if not prepared:
        prepare_tmp(root, step)
    elif not tmp.is_dir():
        raise ValueError(f"save_checkpoint: prepared=True but {str(tmp)!r} does not exist (call prepare_tmp)")
    try:
        save_pretrained(model, str(tmp / POLICY_DIR))
        save_checkpoint_adapter(model, tmp)  # LoRA adapters (PEFT format) in adapter/, when the model has them
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / POLICY_DIR))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": determinism.rng_state() if rng is None else rng,
            "extra": extra or {},
        }
        save_tree(state, tmp / STATE_STEM)
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
            old = root / f"tmp-old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, name)
    older = [path for s, path in list_checkpoints(root) if s < step]
    for path in older[:max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _refuse_old_format(step_dir: Path) -> None:
    if (step_dir / OLD_STATE_FILE).is_file() and not (step_dir / MANIFEST).is_file():
        raise ValueError(f"load_checkpoint: {str(step_dir)!r} is in the older checkpoint format ({OLD_STATE_FILE}, a "
                         "pickle, which can run code when loaded); it is not loaded. Allowed: a checkpoint written by "
                         f"this version; to continue from its weights, start a fresh run with model.path: "
                         f"{str(step_dir / POLICY_DIR)!r}")


def is_complete(step_dir: Path) -> bool:
    """A step directory whose save finished (its manifest, written last, is there)."""
    return (step_dir / MANIFEST).is_file()


def newest_complete(ckpt_dir: str | Path) -> Path | None:
    """The newest complete step directory in a checkpoint root (None when there is none)."""
    done = [path for _, path in list_checkpoints(ckpt_dir) if is_complete(path)]
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete step directory from: a step directory, or a checkpoint root (the step its `latest` file names
    when complete, else its newest complete step), or the `latest` file."""
    p = Path(path)
    if p.is_file() and p.name == LATEST:
        p = p.parent
    _refuse_old_format(p)
    if is_complete(p):
        return p
    if (p / LATEST).is_file():
        target = p / (p / LATEST).read_text().strip()
        _refuse_old_format(target)
        if is_complete(target):
            return target
    newest = newest_complete(p)
    if newest is not None:
        return newest
    for _, step_dir in reversed(list_checkpoints(p)):
        _refuse_old_format(step_dir)
    raise ValueError(f"load_checkpoint: {str(p)!r} is neither a checkpoint step directory (a complete "
                     f"one has {MANIFEST}) nor a checkpoint root holding a complete one")


def read_meta(step_dir: str | Path) -> dict | None:
    """The `meta` dict saved with a checkpoint step directory (None when it was saved without one)."""
    p = Path(step_dir) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else None


@dataclass
class Checkpoint:
    step: int
    path: Path
    policy_path: Path
    optimizer: dict | None
    scheduler: dict | None
    rng: dict
    extra: dict = field(default_factory=dict)
    model: Any = None  # the CausalLM passed in (weights loaded in place) or a newly loaded one; None if skipped



def load_checkpoint(path: str | Path, model=None, optimizer=None, scheduler=None, restore_rng: bool = True,
                    load_model: bool = True, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint (see `resolve_checkpoint` for `path`); objects passed in get their state loaded.

    `model`: its weights are replaced by the saved ones (same shapes/dtype required); without it a new model is
    loaded with `onpolicy.model.load_pretrained` unless `load_model=False`. `restore_rng` restores python/
    numpy/torch(/cuda) RNG states.
    """
    step_dir = resolve_checkpoint(path)
    verify_manifest(step_dir)
    state = load_tree(step_dir / STATE_STEM)
    ck = Checkpoint(step=state["step"], path=step_dir, policy_path=step_dir / POLICY_DIR,
                    optimizer=state["optimizer"], scheduler=state["scheduler"], rng=state["rng"],
                    extra=state.get("extra") or {})
    if model is not None or load_model:
        from onpolicy.model import load_pretrained

        loaded, _ = load_pretrained(str(ck.policy_path), device=device)
        if model is not None:
            from onpolicy.lora.training import restore_policy

            restore_policy(model, loaded, step_dir)  # with LoRA: base from policy/, adapters from adapter/
            loaded = model
        ck.model = loaded
    if optimizer is not None:
        if ck.optimizer is None:
            raise ValueError(f"load_checkpoint: {str(step_dir)!r} holds no optimizer state")
        optimizer.load_state_dict(ck.optimizer)
    if scheduler is not None:
        if ck.scheduler is None:
            raise ValueError(f"load_checkpoint: {str(step_dir)!r} holds no scheduler state")
        scheduler.load_state_dict(ck.scheduler)
    if restore_rng:
        from onpolicy import determinism

        determinism.set_rng_state(ck.rng)
    return ck


def checkpoint_root(cfg) -> Path:
    """Where a run's checkpoints live: `<logging.output_dir>/checkpoints`."""
    return Path(cfg.logging.output_dir) / "checkpoints"


def resume_path(cfg) -> Path | None:
    """The step directory `trainer.resume` names: None for false, and for true when the run's checkpoint root
    holds no complete checkpoint (see onpolicy.trainer.run_dir for what then happens); a path string must
    resolve (see `resolve_checkpoint`) or ValueError."""
    resume = cfg.trainer.resume
    if resume is False:
        return None
    if resume is True:
        root = checkpoint_root(cfg)
        if newest_complete(root) is None:
            for _, step_dir in list_checkpoints(root):
                _refuse_old_format(step_dir)
            return None
        return resolve_checkpoint(root)
    try:
        return resolve_checkpoint(resume)
    except ValueError as e:
        raise ValueError(f"trainer.resume: {e}") from None
