"""RunLogger (console, metrics.jsonl, offline W&B, plots), scripts/plot_run.py, and what a real run logs."""
import io
import json
import math
from pathlib import Path

import pytest
import torch

from onpolicy.config import ExperimentConfig
from onpolicy.logging import _CONSOLE, METRIC_NAMES, RunLogger, plot_metrics
from onpolicy.plots import FIGURES, panels, parity_titles, read_metrics, reward_trend, smoothing_window

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The shipped default, shrunk: 2 RL steps, no SFT warm-start, plots on. Returns its output dir."""
    from onpolicy.config import parse_args
    from onpolicy.trainer import train

    out = tmp_path_factory.mktemp("real") / "run"
    n = torch.get_num_threads()
    train(parse_args(["--config", str(ROOT / "configs/tiny-cpu.yaml"), "--trainer.steps", "2",
                      "--trainer.sft_warmup_steps", "0", "--trainer.prompts_per_step", "2",
                      "--sampling.num_generations", "4", "--logging.output_dir", str(out),
                      "--logging.log_samples_every", "1"]), log=lambda *a: None)
    torch.set_num_threads(n)
    return out


def test_real_run_logs_every_documented_and_plotted_metric(real_run):
    rows = read_metrics(real_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    plotted = {k for keys in FIGURES.values() for k in keys} | {"reward/std", "reward/min", "reward/max"}
    console = {k for k, _ in _CONSOLE if not k.startswith("eval/")}  # eval/*: only on trainer.eval_every steps
    for r in rows:
        missing = (set(METRIC_NAMES) | plotted | console) - set(r)
        assert not missing, missing
    assert sorted(p.name for p in (real_run / "plots").iterdir()) == ["parity.png", "reward.png", "training.png"]
    samples = read_metrics(real_run / "samples.jsonl")
    assert [r["step"] for r in samples] == [1] * 8 + [2] * 8  # 2 prompts x 4 completions a step
    assert {"prompt", "completion", "reward", "rewards", "advantage", "finish_reason"} <= set(samples[0])
    for step in (1, 2):
        group = [r for r in samples if r["step"] == step and r["group"] == 0]
        assert len(group) == 4 and abs(sum(r["advantage"] for r in group)) < 1e-5  # group-normalised
    assert all(r["rewards"] == {"embedded": r["reward"]} for r in samples)


def _cfg(tmp_path, **logging):
    return ExperimentConfig(logging={"output_dir": str(tmp_path / "run"), "plot": False, **logging},
                            trainer={"steps": 3})


def _metrics(step):
    return {"onpolicy/kl": 0.0, "onpolicy/logprob_diff/max": 0.0, "onpolicy/logprob_diff/mean": 0.0,
            "onpolicy/mismatch_frac": 0.0, "reward/mean": 0.1 * step, "reward/std": torch.tensor(0.05),
            "loss": -0.01 * step, "grad_norm": 0.5, "throughput/tokens_per_s": 123.4, "time/sample": 0.1,
            "time/train": 0.2, "time/step": 0.3}


def test_jsonl_and_console(tmp_path):
    out = io.StringIO()
    logger = RunLogger(_cfg(tmp_path, log_every=2), stream=out)
    for step in (1, 2, 3):
        logger.log(_metrics(step), step=step)
    assert logger.close() == []
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["reward/std"] == pytest.approx(0.05) and isinstance(rows[0]["reward/std"], float)
    lines = out.getvalue().strip().splitlines()
    assert lines == ["step 2 | reward 0.2 | std 0.05 | kl 0 | lp_diff_max 0 | loss -0.02 | gnorm 0.5 | "
                     "tok/s 123.4 | s/step 0.3"]  # log_every=2: only step 2 on the console
    assert "trainer:" in (tmp_path / "run/config.yaml").read_text()
    # a new run in the same directory starts the file afresh; a resumed one appends
    with RunLogger(_cfg(tmp_path), stream=io.StringIO()) as again:
        again.log({"loss": 1.0}, step=1)
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 1
    resumed_cfg = _cfg(tmp_path)
    resumed_cfg.trainer.resume = True
    with RunLogger(resumed_cfg, stream=io.StringIO()) as resumed:
        resumed.log({"loss": 1.0}, step=2)
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 2


def test_console_shows_each_reward_beside_the_total():
    row = {"step": 3, "reward/mean": 0.5, "reward/std": 0.1, "reward/exact/mean": 0.25, "reward/exact/std": 0.4,
           "reward/judge/mean": 1.5, "reward/zero_std_frac": 0.0, "onpolicy/kl": 0.0}
    assert RunLogger.format_line(row) == "step 3 | reward 0.5 | std 0.1 | exact 0.25 | judge 1.5 | kl 0"
    one = {"step": 1, "reward/mean": 0.5, "reward/exact/mean": 0.5}  # one reward: the total says it all
    assert RunLogger.format_line(one) == "step 1 | reward 0.5"


def test_bad_metrics_and_disabled(tmp_path):
    logger = RunLogger(_cfg(tmp_path), stream=io.StringIO())
    with pytest.raises(ValueError, match="metric 'loss' must be a number, got str"):
        logger.log({"loss": "high"}, step=1)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        logger.log({"loss": 1.0}, step=-1)
    logger.close()
    quiet = RunLogger(_cfg(tmp_path, output_dir=str(tmp_path / "other")), enabled=False)
    quiet.log({"loss": 1.0}, step=1)
    quiet.close()
    assert not (tmp_path / "other").exists()


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(_cfg(tmp_path, report_to=["console", "wandb"], run_name="t"), stream=io.StringIO())
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    logger.log(_metrics(1), step=1)
    logger.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, list((tmp_path / "run").rglob("*"))


def test_plots(tmp_path):
    logger = RunLogger(_cfg(tmp_path, plot=True), stream=io.StringIO())
    for step in range(1, 6):
        logger.log(_metrics(step), step=step)
    paths = logger.close()
    assert [Path(p).name for p in paths] == ["reward.png", "parity.png", "training.png"]
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only some metrics: figures without data are skipped
    jsonl = tmp_path / "few.jsonl"
    jsonl.write_text(json.dumps({"step": 1, "grad_norm": 1.0}) + "\n" + json.dumps({"step": 2, "grad_norm": math.nan})
                     + "\n" + '{"step": 3, "grad')  # a last line cut short by a kill
    assert [Path(p).name for p in plot_metrics(jsonl, tmp_path / "few")] == ["training.png"]


def test_reward_trend_smooths_and_its_band_informs():
    """0/1 rewards at 16 completions a step: a per-step +-std band spans ~0-1; the rolling mean's standard-error
    band is narrow, and stretches before and after a real rise do not overlap."""
    import random

    rng = random.Random(0)
    rows = [{"step": s, "reward/mean": sum(rng.random() < (0.3 if s <= 100 else 0.7) for _ in range(16)) / 16}
            for s in range(1, 201)]
    xs, mean, smooth, lo, hi, w = reward_trend(rows)
    assert w == smoothing_window(200) == 13 and xs == list(range(1, 201))
    assert all(a <= m <= b for a, m, b in zip(lo, smooth, hi))
    steady = [i for i in range(10, 190) if abs(i - 100) > 10]  # whole windows that do not straddle the rise
    assert max(hi[i] - lo[i] for i in steady) < 0.2  # a per-step std of 0/1 rewards is ~0.46 each way
    assert hi[40] < lo[160]  # 0.3 -> 0.7 shows
    assert abs(smooth[40] - 0.3) < 0.08 and abs(smooth[160] - 0.7) < 0.08
    assert smoothing_window(5) == 1 and reward_trend([{"step": 1}]) is None


def test_constant_training_panels_are_named_not_drawn():
    rows = [{"step": s, "grad_norm": 1.0 + s, "loss/clip_frac": 0.0, "completion/mean_length": 4.0,
             "loss/kl_ref": 0.0} for s in (1, 2, 3)]
    assert panels(rows, "training", FIGURES["training"]) == (["grad_norm"],
                                                           {"loss/clip_frac": 0.0, "completion/mean_length": 4.0})
    flat = [{"step": s, "grad_norm": 1.0} for s in (1, 2)]
    assert panels(flat, "training", FIGURES["training"]) == (["grad_norm"], {})  # nothing else: drawn anyway


def test_parity_titles_say_exactly_zero_only_when_true():
    zeros = {"onpolicy/kl": 0.0, "onpolicy/logprob_diff/max": 0.0, "onpolicy/logprob_diff/mean": 0.0,
             "onpolicy/mismatch_frac": 0.0}
    titles, title = parity_titles([{"step": 1, **zeros}, {"step": 2, **zeros}])
    assert title.endswith("all exactly 0.0 at every step") and all(t.endswith("all exactly 0.0") for t in titles)
    for bad in (1e-9, math.nan):
        titles, title = parity_titles([{"step": 1, **zeros}, {"step": 2, **zeros, "onpolicy/kl": bad}])
        assert title.endswith("NOT bitwise equal") and titles[0] == "onpolicy/kl: 1/2 steps not 0.0"
        assert titles[1] == "onpolicy/logprob_diff/max: all exactly 0.0"


def test_plot_run_script(tmp_path):
    from scripts import plot_run as mod

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, **{k: float(v) for k, v in _metrics(s).items()}}) + "\n"
                             for s in (1, 2)))
    paths = mod.main([str(jsonl)])
    assert sorted(Path(p).name for p in paths) == ["parity.png", "reward.png", "training.png"]
    assert all(Path(p).parent == tmp_path / "plots" for p in paths)
    assert mod.plot_metrics is plot_metrics
