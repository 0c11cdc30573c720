"""Run logging: console lines, `<output_dir>/metrics.jsonl`, sample completions, optional W&B, a progress bar,
PNG plots at the end.

`RunLogger(cfg)` writes `config.yaml` into `cfg.logging.output_dir` and starts `metrics.jsonl` afresh (appends
when `trainer.resume` is set); `log(metrics, step)` appends one JSON object every step and prints one compact
console line every `log_every` steps. `log_samples` writes completions (`onpolicy.samples`: samples.jsonl,
console, a W&B table) every `log_samples_every` steps. `progress_bar` is a tqdm bar with ETA on stderr (the RL
steps here, the SFT warm-up in the trainer) when `logging.progress_bar` is on and stderr is a terminal; console
lines are written around it (`tqdm.write`, `beside_bar`) so they stay whole. With
"wandb" in `report_to` it starts a run (lazy import); when no API key is configured (`WANDB_API_KEY` or a
netrc entry) and `WANDB_MODE` is unset, it sets `WANDB_MODE=offline`. `close()` finishes W&B and, with
`logging.plot`, writes PNGs through `onpolicy.plots.plot_metrics` (also `scripts/plot_run.py`). Only the main process should
log: pass `enabled=False` elsewhere. metrics.jsonl deleted (or replaced) while the run writes it is noticed at the
next row and at `close()`: the file is recreated with every row this logger wrote, with a warning (rows a resumed
run kept from before its checkpoint are not in memory and are lost). Left out: TensorBoard, system metrics.
"""
from __future__ import annotations

import json
import math
import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any

from onpolicy.plots import plot_metrics, read_metrics
from onpolicy.samples import SampleLog, console_lines, sample_rows, wandb_table

__all__ = ["METRIC_NAMES", "RunLogger", "StageTimes", "beside_bar", "plot_metrics", "progress_bar", "read_metrics",
           "wandb_api_key_configured"]

METRIC_NAMES = (
    "step", "onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac",
    "reward/mean", "reward/std", "loss", "grad_norm", "throughput/tokens_per_s", "time/sample", "time/train",
    "time/step",
)
# Console line: (metric, short label); missing metrics are skipped.
_CONSOLE = (("reward/mean", "reward"), ("reward/std", "std"), ("onpolicy/kl", "kl"),
            ("onpolicy/logprob_diff/max", "lp_diff_max"), ("loss", "loss"), ("grad_norm", "gnorm"),
            ("eval/accuracy", "eval_acc"), ("throughput/tokens_per_s", "tok/s"), ("time/step", "s/step"))


def _to_number(name: str, value: Any) -> float | int:
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"RunLogger.log: metric {name!r} must be a number, got {type(value).__name__}")
    return value


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, stream=None):
    """A tqdm bar (with ETA) on `stream` (stderr), or None when disabled, not a terminal or tqdm is missing."""
    stream = sys.stderr if stream is None else stream
    if not enabled or not getattr(stream, "isatty", lambda: False)():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=stream, leave=False, dynamic_ncols=True)


def beside_bar(log, bar):
    """`log` made safe to call while `bar` is drawn: the bar is cleared, the text printed, the bar redrawn."""
    if bar is None:
        return log

    def write(*args, **kwargs):
        with type(bar).external_write_mode(file=bar.fp):
            log(*args, **kwargs)

    return write


class StageTimes:
    """Wall seconds of consecutive stages: `mark(name)` ends the stage running since the previous mark (or
    construction); `line()` -> "set-up: 12.3 s (data 0.4, model 3.1, ...)"."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        self.last = now

    def line(self, what: str = "set-up") -> str:
        parts = ", ".join(f"{name} {secs:.1f}" for name, secs in self.stages.items())
        return f"{what}: {self.last - self.start:.1f} s ({parts})"


def hardware_name(device: str = "auto") -> str:
    """'NVIDIA H100 80GB HBM3' on CUDA, else the CPU model and its core count (from /proc/cpuinfo where there)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return f"{model or platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return f"{v:g}"
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.2e}"


class RunLogger:
    """Console + metrics.jsonl + optional W&B for one run (see module doc)."""

    def __init__(self, cfg, enabled: bool = True, stream=None, start_step: int = 0, bar_stream=None):
        self.cfg, self.enabled = cfg, enabled
        largs = cfg.logging
        self.output_dir = Path(largs.output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.stream = stream or sys.stdout
        self.console = "console" in largs.report_to
        self._wandb = None
        self._bar = None
        self._closed = False
        self._t0 = time.time()
        self._rows: list[str] = []  # every line written, to recreate a deleted metrics.jsonl
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.yaml").write_text(cfg.to_yaml())
        self._file = self.metrics_path.open("a" if cfg.trainer.resume else "w")
        self.samples = SampleLog(self.output_dir, largs.log_samples_every,
                                 start_step if cfg.trainer.resume else None)
        self._bar = progress_bar(cfg.trainer.steps, largs.run_name or "rl steps", self.console and largs.progress_bar,
                                 initial=start_step, stream=bar_stream)
        if "wandb" in largs.report_to:
            self._start_wandb()

    def _start_wandb(self) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("logging.report_to: 'wandb' needs the wandb package (pip install wandb); "
                             "allowed without it: [console]") from None
        if not os.environ.get("WANDB_MODE") and not wandb_api_key_configured():
            os.environ["WANDB_MODE"] = "offline"
            self.print("wandb: no API key configured -> WANDB_MODE=offline (sync later with `wandb sync`)")
        largs = self.cfg.logging
        self._wandb = wandb.init(project=largs.project, name=largs.run_name, config=self.cfg.to_dict(),
                                 dir=str(self.output_dir))

    def print(self, text: str) -> None:
        if not (self.enabled and self.console):
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def log(self, metrics: dict[str, Any], step: int) -> dict:
        """Record `metrics` for `step` (every step to jsonl/W&B; console every `log_every`); returns the row."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"RunLogger.log: step must be an int >= 0, got {step!r}")
        if not isinstance(metrics, dict):
            raise ValueError(f"RunLogger.log: metrics must be a dict, got {type(metrics).__name__}")
        row = {"step": step, **{k: _to_number(k, v) for k, v in metrics.items() if k != "step"}}
        if not self.enabled or self._closed:
            return row
        self._check_file()
        line = json.dumps(row, allow_nan=True) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            from onpolicy.trainer.run_dir import disk_full

            raise (disk_full(e, self.metrics_path) or e) from e
        self._rows.append(line)
        if self._wandb is not None:
            self._wandb.log(row, step=step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(" ".join(f"{label} {_fmt(row[k])}" for k, label in _CONSOLE[:3] if k in row))
        if self.console and step % self.cfg.logging.log_every == 0:
            self.print(self.format_line(row))
        return row

    def _check_file(self) -> None:
        """Recreate metrics.jsonl with every row written so far when it was deleted or replaced meanwhile."""
        try:
            gone = os.stat(self.metrics_path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            gone = True
        if not gone:
            return
        self._file.close()
        self._file = self.metrics_path.open("w")
        self._file.writelines(self._rows)
        self._file.flush()
        self.print(f"warning: {self.metrics_path} was deleted during the run; recreated it with the "
                   f"{len(self._rows)} rows logged before")

    def log_samples(self, step: int, prompts: list[str], scored) -> list[dict]:
        """Completions of `step` (a `ScoredBatch`; `prompts` by group) when the step is due (see onpolicy.samples);
        returns the rows written."""
        if not self.enabled or self._closed or not self.samples.due(step):
            return []
        rows = sample_rows(step, prompts, scored)
        self.samples.write(rows)
        if self.console:
            for line in console_lines(rows, self.cfg.logging.num_samples):
                self.print(line)
        if self._wandb is not None:
            import wandb

            self._wandb.log({"samples": wandb_table(wandb, rows)}, step=step)
        return rows

    def beside_bar(self, log):
        """`log` made safe to call while the progress bar is drawn."""
        return beside_bar(log, self._bar)

    @staticmethod
    def format_line(row: dict) -> str:
        """`step N | reward .. | std .. | <each reward's mean, with two or more rewards> | kl .. | ...`."""
        parts = [f"step {row['step']}"] + [f"{label} {_fmt(row[k])}" for k, label in _CONSOLE if k in row]
        per_reward = [k for k in row if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2]
        if len(per_reward) > 1:
            at = 1 + sum(k in row for k in ("reward/mean", "reward/std"))
            parts[at:at] = [f"{k[len('reward/'):-len('/mean')]} {_fmt(row[k])}" for k in per_reward]
        return " | ".join(parts)

    def close(self) -> list[str]:
        """Flush and close sinks; returns the PNG paths written (empty when plotting is off)."""
        if not self.enabled or self._closed:
            return []
        self._closed = True
        self._check_file()
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()
        paths: list[str] = []
        if self.cfg.logging.plot and self.metrics_path.exists() and self.metrics_path.stat().st_size:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            run = self.cfg.logging.run_name or self.output_dir.name
            note = f"{run}, {when}, {hardware_name(self.cfg.model.device)}"
            paths = plot_metrics(self.metrics_path, self.output_dir / "plots", note=note)
            self.print(f"plots: {', '.join(paths)}")
        return paths

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
