"""The run directory: root and '..' refused, a live lock refused and a dead one taken over, an earlier run's
results never deleted without logging.overwrite (and all of them deleted with it), writability probed, disk full
reported as such."""
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onpolicy.config import ConfigError, ExperimentConfig
from onpolicy.trainer import run_dir


def _cfg(out, **trainer):
    return ExperimentConfig(logging={"output_dir": str(out)}, trainer=trainer)


@pytest.mark.parametrize("path", ["/", "/tmp/..", "runs/../x", "//"])
def test_root_and_dotdot_refused_at_config_load(path):
    with pytest.raises(ConfigError, match=r"logging\.output_dir: .*allowed: a (path without '\.\.'|directory below "
                                          r"the filesystem root)"):
        ExperimentConfig(logging={"output_dir": path})


def test_second_run_into_a_locked_directory_is_refused_and_a_dead_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / run_dir.LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "x"}))
        with pytest.raises(ValueError, match=rf"logging\.output_dir: .* is in use by another run \(pid {holder.pid}"):
            run_dir.claim(_cfg(out), log=lambda *a: None)
    finally:
        holder.kill()
        holder.wait()
    lines = []
    claimed = run_dir.claim(_cfg(out), log=lines.append)  # the holder is dead: its lock is stale
    assert any("taking over the lock of an ended run" in line for line in lines)
    assert json.loads((out / run_dir.LOCK).read_text())["pid"] == os.getpid()
    assert lines[0] == f"run directory: {out}"
    other = subprocess.run([sys.executable, "-c", "import sys; from onpolicy.config import ExperimentConfig; "
                            "from onpolicy.trainer.run_dir import claim; "
                            f"claim(ExperimentConfig(logging={{'output_dir': {str(out)!r}}}))"],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert other.returncode != 0 and f"is in use by another run (pid {os.getpid()}" in other.stderr
    claimed.release()
    assert not (out / run_dir.LOCK).exists()


def _earlier_run(out):
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    (out / "checkpoints" / "step-6").mkdir()
    (out / "plots").mkdir()
    (out / "plots" / "reward.png").write_bytes(b"png")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")


def test_earlier_results_need_overwrite_and_overwrite_clears_them(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"logging\.output_dir: .*holds an earlier run's results \(metrics\.jsonl, "
                                             r"checkpoints, plots\);.*trainer\.resume: true.*logging\.overwrite: true"):
            run_dir.claim(_cfg(out, resume=resume), log=lambda *a: None)
        assert (out / "metrics.jsonl").read_text() and (out / "checkpoints" / "step-6").is_dir()
        assert not (out / run_dir.LOCK).exists()  # a refused claim leaves no lock
    cfg = _cfg(out)
    cfg.logging.overwrite = True
    lines = []
    run_dir.claim(cfg, log=lines.append).release()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only results go, the user's other files stay
    assert any("deleted the earlier run's metrics.jsonl, checkpoints, plots" in line for line in lines)


def test_resume_true_with_nothing_saved_starts_fresh_and_says_so(tmp_path):
    lines = []
    run_dir.claim(_cfg(tmp_path / "run", resume=True), log=lines.append).release()
    assert any("trainer.resume: no checkpoint in" in line and "starting at step 0" in line for line in lines)


def test_unwritable_directory_is_one_line_error(tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: a read-only filesystem instead
        out = Path("/sys/kernel/onpolicy-run")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out = tmp_path / "ro" / "run"
    with pytest.raises(ValueError, match=r"logging\.output_dir: cannot write to .*onpolicy-run|ro/run"):
        run_dir.claim(_cfg(out), log=lambda *a: None)


def test_disk_full_is_reported_as_such():
    err = run_dir.disk_full(OSError(errno.ENOSPC, "No space left on device"), "/data/run/metrics.jsonl")
    assert "disk full while writing '/data/run/metrics.jsonl'" in str(err)
    torch_err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 448 vs 342")
    assert "disk full" in str(run_dir.disk_full(torch_err, "/x"))
    assert run_dir.disk_full(OSError(errno.EACCES, "denied"), "/x") is None


def test_sft_cache_lives_inside_the_run_unless_set(tmp_path, monkeypatch):
    from onpolicy.trainer import setup, sft

    seen = []
    monkeypatch.setattr(sft, "sft_warmup", lambda *a, cache_dir=None, **k: seen.append(cache_dir) or {})
    cfg = ExperimentConfig(logging={"output_dir": str(tmp_path / "run")}, trainer={"sft_warmup_steps": 2})
    from onpolicy.data import load_prompts
    from onpolicy.model.tiny import CharTokenizer

    tok = CharTokenizer()
    rows = load_prompts(cfg.data, tok)[:2]
    setup.run_sft(cfg, None, tok, rows, lambda text: [1], print, show_progress=False)
    cfg.trainer.sft_cache_dir = str(tmp_path / "shared")
    setup.run_sft(cfg, None, tok, rows, lambda text: [1], print, show_progress=False)
    assert seen == [str(tmp_path / "run" / "cache"), str(tmp_path / "shared")]


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    """Under DDP every rank runs train(); rank 0 owns the run directory, the others never touch its lock."""
    from onpolicy.trainer import loop
    from onpolicy.trainer.distributed import Dist

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / run_dir.LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))

        def built(*a, **k):
            raise RuntimeError("build_trainer reached")

        monkeypatch.setattr(Dist, "current", staticmethod(lambda: Dist(rank=1, world_size=2)))
        with pytest.raises(RuntimeError, match="build_trainer reached"):
            loop.train(_cfg(out), log=lambda *a: None, builder=built)
        monkeypatch.setattr(Dist, "current", staticmethod(lambda: Dist(rank=0, world_size=2)))
        with pytest.raises(ValueError, match="is in use by another run"):
            loop.train(_cfg(out), log=lambda *a: None, builder=built)
        assert json.loads((out / run_dir.LOCK).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_checkpoint_save_on_a_full_disk_says_disk_full(tmp_path, monkeypatch):
    from onpolicy.data import PromptIterator
    from onpolicy.model.tiny import build_tiny
    from onpolicy.trainer import Replicated, Trainer, checkpoint
    from onpolicy.trainer.health import RunStopped

    model, tok = build_tiny(seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=16)
    trainer = Trainer(_cfg(tmp_path / "run"), device=torch.device("cpu"), strategy=Replicated(), model=model,
                      optimizer=None, sampler=None, tokenizer=tok, prompts=PromptIterator([1, 2], 1))

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 448 vs 342")

    monkeypatch.setattr(checkpoint, "save_tree", full)
    with pytest.raises(RunStopped, match=r"disk full while writing '.*run/checkpoints/step-3'"):
        trainer.save(3)
