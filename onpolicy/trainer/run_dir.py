"""The run directory (`logging.output_dir`): path checks, one run at a time, no silent loss of an earlier run.

The config refuses the filesystem root and `..` components (`config_fields.run_dir_problem`). `claim(cfg, log)` runs
on rank 0 before any compute: it prints where the run writes (absolute path), creates the directory, proves it
writable (a probe file written, fsynced and removed), takes the lock `run.lock` and applies the overwrite rule:

- a lock held by a live process (pid alive on this host, or any pid on another host) is an error naming it;
  a lock left by a dead process is taken over with a note;
- a fresh start (no checkpoint resumed) into a directory holding an earlier run's results (metrics rows,
  checkpoints, plots, samples) is an error naming `logging.output_dir`, `logging.overwrite` and `trainer.resume`;
  with `logging.overwrite: true` those results are deleted first, so nothing of the old run mixes in;
- `trainer.resume: true` with no complete checkpoint and no earlier results starts at step 0 (it means "continue
  this directory's run if there is one", so a restarted job script needs no edit).

`RunDir.release()` removes the lock (train() calls it however the run ends). `disk_full(error, path)` turns an
out-of-space failure (ENOSPC, or torch's "unexpected pos") into a `RunStopped` saying "disk full" and naming the
path. Left out: locks on network filesystems without O_EXCL semantics, a race between two processes taking over
the same stale lock at the same instant.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path

from onpolicy.trainer.health import RunStopped

LOCK = "run.lock"
RESULTS = ("metrics.jsonl", "samples.jsonl", "checkpoints", "plots", "wandb")  # what logging.overwrite deletes
_FULL_MARKERS = ("No space left", "unexpected pos", "StorageFull", "os error 28", "Disk quota exceeded")


class DiskFull(RunStopped):
    """The disk (or quota) holding `path` is full."""


def disk_full(error: BaseException, path) -> DiskFull | None:
    """A DiskFull naming `path` when `error` is an out-of-space failure, else None."""
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and not any(m in str(error) for m in _FULL_MARKERS):
        return None
    return DiskFull(f"disk full while writing {str(path)!r} ({type(error).__name__}: {' '.join(str(error).split())}); "
                    "free space there or choose another logging.output_dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunDir:
    """The claimed run directory of this process (rank 0); `release()` frees its lock."""

    def __init__(self, path: Path):
        self.path, self.lock = path, path / LOCK

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.lock.read_text())
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self, log) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                mine = pid == me["pid"] and host == me["host"]
                if not mine and isinstance(pid, int) and (host != me["host"] or _pid_alive(pid)):
                    raise ValueError(f"logging.output_dir: {str(self.path)!r} is in use by another run (pid {pid} on "
                                     f"{host}, since {owner.get('started')}); allowed: another logging.output_dir, or "
                                     f"wait for that run to end (if it is gone, delete {str(self.lock)!r})") from None
                if not mine:
                    log(f"run directory: taking over the lock of an ended run (pid {pid} on {host})")
                self.lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise ValueError(f"logging.output_dir: could not take the lock {str(self.lock)!r}; another run started here")

    def release(self) -> None:
        if self._owner().get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)


def _probe(path: Path) -> None:
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"onpolicy")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        full = disk_full(e, path)
        if full is not None:
            raise full from None
        raise ValueError(f"logging.output_dir: cannot write to {str(path)!r} ({e.strerror or e}); allowed: a "
                         "writable directory") from None


def earlier_results(path: Path) -> list[str]:
    """What of an earlier run's results `path` holds (names; empty files and directories do not count)."""
    found = []
    for name in RESULTS:
        p = path / name
        if (p.is_file() and p.stat().st_size > 0) or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def _clear(path: Path, names: list[str], log) -> None:
    for name in RESULTS:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    log(f"logging.overwrite: deleted the earlier run's {', '.join(names)} in {str(path)!r}")


def claim(cfg, log=print) -> RunDir:
    """Rank 0, before any compute: print the directory, probe it, lock it, apply the overwrite rule (module doc)."""
    from onpolicy.trainer.checkpoint import resume_path

    path = Path(os.path.abspath(cfg.logging.output_dir))
    log(f"run directory: {path}")
    _probe(path)
    run_dir = RunDir(path)
    run_dir.acquire(log)
    try:
        if resume_path(cfg) is None:
            found = earlier_results(path)
            if found and not cfg.logging.overwrite:
                why = (" trainer.resume is true but it holds no complete checkpoint;" if cfg.trainer.resume is True
                       else "")
                raise ValueError(f"logging.output_dir: {str(path)!r} holds an earlier run's results "
                                 f"({', '.join(found)});{why} allowed: trainer.resume: true to continue it, "
                                 "logging.overwrite: true to delete them and start over, or another logging.output_dir")
            if found:
                _clear(path, found, log)
            elif cfg.trainer.resume is True:
                log(f"trainer.resume: no checkpoint in {str(path / 'checkpoints')!r} yet; starting at step 0")
    except BaseException:
        run_dir.release()
        raise
    return run_dir
