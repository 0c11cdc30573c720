"""A failed run keeps its progress: a reward error, Ctrl-C or SIGTERM after step k saves step k (never a state
from inside an optimizer update) and prints the resume command; the resume (found without `latest`) ends with
the uninterrupted run's bits. A finished run's directory is not reused without logging.overwrite."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onpolicy.rewards import register_reward

REPO = Path(__file__).resolve().parents[2]
FLAKY = {"calls": 0, "raise_at": None}
# No warm start (fast); a length reward varies within groups, so every update moves the weights.
FAST = {"trainer.sft_warmup_steps": 0, "trainer.prompts_per_step": 2, "sampling.num_generations": 2,
        "data.num_examples": 64, "trainer.lr": 1e-2, "rewards": "[{name: test_flaky_length}]"}


@register_reward("test_flaky_length")
def _flaky_length(prompts, completions, **kw):
    FLAKY["calls"] += 1
    if FLAKY["calls"] == FLAKY["raise_at"]:
        raise RuntimeError("reward server went away")
    return [len(c) / 8 for c in completions]


def _train(cfg, lines=None, parts=None):
    from onpolicy.trainer import train

    FLAKY["calls"] = 0
    return train(cfg, log=(lines.append if lines is not None else lambda *a: None), parts=parts)


def _steps_saved(cfg):
    from onpolicy.trainer.checkpoint import checkpoint_root, list_checkpoints

    return [s for s, _ in list_checkpoints(checkpoint_root(cfg))]


def _weights(policy_dir):
    from onpolicy.model import load_pretrained

    return load_pretrained(str(policy_dir))[0].state_dict()


def _rows(cfg):
    timing = ("time/", "throughput/")
    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(timing)} for line in f]


def test_reward_error_saves_the_last_step_and_resume_is_bitwise(tiny_cfg):
    straight = tiny_cfg("straight", **FAST, **{"trainer.steps": 3})
    s = _train(straight)
    failing = tiny_cfg("failing", **FAST, **{"trainer.steps": 3})
    FLAKY["raise_at"] = 3
    lines = []
    try:
        with pytest.raises(ValueError, match=r"reward 'test_flaky_length' raised RuntimeError: reward server went"):
            _train(failing, lines)
    finally:
        FLAKY["raise_at"] = None
    assert _steps_saved(failing) == [2]
    out = Path(failing.logging.output_dir).resolve()
    assert f"saved the state after step 2 in {out}/checkpoints/step-2" in lines
    assert f"--config {out}/config.yaml --logging.output_dir {out} --trainer.resume true" in lines[-1]
    (out / "checkpoints" / "latest").unlink()  # resume finds the newest complete checkpoint without it
    resumed = tiny_cfg("failing", **FAST, **{"trainer.steps": 3, "trainer.resume": True})
    r = _train(resumed)
    assert r["start_step"] == 2
    a, b = _weights(s["final_policy"]), _weights(r["final_policy"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(straight) == _rows(resumed)
    first = _weights(out / "checkpoints/step-2/policy")
    assert any(not torch.equal(first[k], a[k]) for k in a), "step 3 did not change the weights"


class _CtrlCAtSecondStep:
    """A rollout source: the engine's rollouts, with Ctrl-C while sampling the second step."""

    def __init__(self, trainer):
        from onpolicy.trainer import SingleTurnRollouts

        self.real, self.calls = SingleTurnRollouts.for_trainer(trainer), 0

    def collect(self, rows, step):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.real.collect(rows, step)


def test_ctrl_c_between_updates_saves_the_last_step(tiny_cfg):
    from onpolicy.trainer import TrainerParts
    from onpolicy.trainer.health import RunInterrupted

    cfg = tiny_cfg(**FAST, **{"trainer.steps": 3})
    with pytest.raises(RunInterrupted, match=r"stopped by Ctrl-C during step 2; the last good state is in "
                                             r".*step-1/policy; resume with: python .*--trainer\.resume true"):
        _train(cfg, parts=TrainerParts(rollouts=_CtrlCAtSecondStep))
    assert _steps_saved(cfg) == [1]
    assert not (Path(cfg.logging.output_dir) / "run.lock").exists()


def test_interrupt_inside_an_optimizer_update_saves_no_mixed_state(tiny_cfg, monkeypatch):
    from onpolicy.trainer.health import RunInterrupted
    from onpolicy.trainer.precision import MasterWeightAdamW

    real, calls = MasterWeightAdamW._refresh_params, {"n": 0}

    def half_applied(self):
        calls["n"] += 1
        if calls["n"] == 2:  # step 2: AdamW moved the masters, the model's copy not yet
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(MasterWeightAdamW, "_refresh_params", half_applied)
    cfg = tiny_cfg(**FAST, **{"trainer.steps": 3, "trainer.save_every": 1})
    lines = []
    with pytest.raises(RunInterrupted, match=r"during step 2; the last good state is in .*step-1/policy"):
        _train(cfg, lines)
    assert _steps_saved(cfg) == [1]
    assert any(line.startswith("not saved: the failure came inside an optimizer update of step 2") for line in lines)


@pytest.mark.parametrize("sig, name, code", [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_signals_stop_with_one_line_and_the_resume_command(e2e_root, sig, name, code):
    out = e2e_root / f"signal-{name}"
    args = ["--config", "configs/tiny-cpu.yaml", "--trainer.steps", "3", "--logging.output_dir", str(out),
            "--logging.plot", "false", *[x for k, v in FAST.items() if k != "rewards" for x in (f"--{k}", str(v))]]
    code_text = ("import os; from onpolicy.cli import train_command\n"
                 "from onpolicy.trainer import SingleTurnRollouts, TrainerParts\n"
                 "class SignalInStep2(SingleTurnRollouts):\n"
                 "    def collect(self, rows, step):\n"
                 f"        if step == 1: os.kill(os.getpid(), {int(sig)})\n"
                 "        return super().collect(rows, step)\n"
                 f"train_command({args!r}, parts=TrainerParts(rollouts=SignalInStep2.for_trainer))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code_text], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == code, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"interrupted: stopped by {name} during step 2; the last good state is in {out}")
    assert "--trainer.resume true" in p.stderr and (out / "checkpoints/step-1/manifest.json").is_file()


def test_a_finished_run_is_not_overwritten_without_overwrite(tiny_cfg, monkeypatch):
    from onpolicy.model import tiny

    first = tiny_cfg("done", **FAST, **{"trainer.steps": 2, "trainer.save_every": 1, "trainer.keep_checkpoints": 5})
    lines = []
    _train(first, lines)
    out = Path(first.logging.output_dir)
    assert f"run directory: {out.resolve()}" in lines
    real = tiny.build_tiny

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the run directory check")

    monkeypatch.setattr(tiny, "build_tiny", no_compute)
    again = tiny_cfg("done", **FAST, **{"trainer.steps": 1})
    with pytest.raises(ValueError, match=r"logging\.output_dir: .* holds an earlier run's results \(metrics\.jsonl, "
                                         r"checkpoints\); allowed: trainer\.resume: true .* logging\.overwrite: true"):
        _train(again)
    assert _steps_saved(first) == [1, 2]
    monkeypatch.setattr(tiny, "build_tiny", real)
    fresh = tiny_cfg("done", **FAST, **{"trainer.steps": 1, "logging.overwrite": True})
    _train(fresh)
    assert _steps_saved(fresh) == [1] and [r["step"] for r in _rows(fresh)] == [1]
