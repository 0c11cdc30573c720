"""metrics.jsonl -> PNGs a person can read: reward.png, parity.png, training.png (used by `RunLogger.close()`
and `scripts/plot_run.py`).

reward.png: each step's reward/mean drawn faint, over it a centred rolling mean (`smoothing_window` steps)
with a band of +-2 standard errors of that mean (the spread of the per-step means in the window / sqrt(window)):
where the bands of two stretches do not overlap, the reward changed by more than step-to-step noise. (A
per-step +-std band says nothing for 0/1 rewards: it spans most of 0-1 at every step.) parity.png: one small
panel per parity metric, with markers, so four lines at 0.0 cannot hide each other; a title says "all exactly
0.0" only when every logged value is exactly 0.0. training.png: what tells a user how the update goes -- grad
norm, clip fraction, completion length and truncation, KL to the reference; a series that never changes (e.g.
clip fraction 0 with one update per batch) is named in the title instead of drawn. The GRPO loss itself is
not plotted: with group-normalised advantages it is ~0 by construction. Every figure's footer says what run it
shows, when, and on what hardware (`note`). Left out: comparing several runs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")
TRAINING = ("grad_norm", "loss/clip_frac", "completion/mean_length", "completion/truncated_frac", "loss/kl_ref")
FIGURES = {"reward": ("reward/mean",), "parity": PARITY, "training": TRAINING}


def read_metrics(jsonl_path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a kill mid-write is skipped."""
    with open(jsonl_path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return rows


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _marker(xs) -> str | None:
    return "." if len(xs) <= 100 else None


def smoothing_window(n: int) -> int:
    """Steps in the rolling window for n logged steps: about n/15, odd, between 1 and 51 (1 below 10 steps)."""
    if n < 10:
        return 1
    w = max(3, min(51, n // 15))
    return w if w % 2 else w + 1


def reward_trend(rows: list[dict], window: int | None = None) -> tuple[list, list, list, list, list, int] | None:
    """(steps, per-step mean, rolling mean, lo, hi, window): the rolling mean over `window` steps centred on each
    step (fewer at the ends) and +-2 standard errors of it; None without reward/mean."""
    xs, mean = _series(rows, "reward/mean")
    if not xs:
        return None
    w = smoothing_window(len(xs)) if window is None else window
    smooth, lo, hi = [], [], []
    for i in range(len(xs)):
        part = [v for v in mean[max(0, i - w // 2): i + w // 2 + 1] if math.isfinite(v)]
        m = sum(part) / len(part) if part else math.nan
        var = sum((v - m) ** 2 for v in part) / (len(part) - 1) if len(part) > 1 else 0.0
        se = math.sqrt(var / len(part)) if part else math.nan
        smooth.append(m)
        lo.append(m - 2 * se)
        hi.append(m + 2 * se)
    return xs, mean, smooth, lo, hi, w


def _plot_reward(fig, rows) -> None:
    ax = fig.subplots()
    xs, mean, smooth, lo, hi, w = reward_trend(rows)
    ax.plot(xs, mean, marker=_marker(xs), markersize=3, lw=0.8, color="C0", alpha=0.3, label="reward/mean (each step)")
    if w > 1:
        ax.fill_between(xs, lo, hi, alpha=0.25, color="C1", lw=0, label="+-2 standard errors of the rolling mean")
        ax.plot(xs, smooth, color="C1", lw=2, label=f"rolling mean of {w} steps")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_xlabel("step")


def _all_zero(values) -> bool:
    return bool(values) and all(v == 0 for v in values)


def parity_titles(rows: list[dict], keys=PARITY) -> tuple[list[str], str]:
    """(one title per parity panel, the figure title); "all exactly 0.0" only where every value is 0.0."""
    titles = []
    for key in keys:
        ys = _series(rows, key)[1]
        bad = sum(1 for v in ys if v != 0)  # NaN != 0: a NaN is never "exactly 0.0"
        titles.append(f"{key}: all exactly 0.0" if _all_zero(ys) else f"{key}: {bad}/{len(ys)} steps not 0.0")
    exact = all(_all_zero(_series(rows, k)[1]) for k in keys)
    return titles, "sampler vs trainer logprobs: " + ("all exactly 0.0 at every step" if exact else "NOT bitwise equal")


def _plot_parity(fig, rows, keys) -> None:
    axes = fig.subplots(2, 2, sharex=True, squeeze=False).reshape(-1)
    titles, suptitle = parity_titles(rows, keys)
    for ax, key, title in zip(axes, keys, titles):
        xs, ys = _series(rows, key)
        zero = _all_zero(ys)
        ax.plot(xs, ys, marker="o", markersize=3, color="C2" if zero else "C3")
        ax.set_title(title, fontsize=9)
        if zero:
            ax.set_ylim(-1, 1)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax in axes[-2:]:
        ax.set_xlabel("step")
    fig.suptitle(suptitle, fontsize=10)


def _plot_panels(fig, rows, keys, constant: dict) -> None:
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False).reshape(-1)
    for i, (ax, key) in enumerate(zip(axes, keys)):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker=_marker(xs), color=f"C{i}")
        ax.set_ylabel(key.replace("/", "/\n"), fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    if constant:
        fig.suptitle("constant, not drawn: " + ", ".join(f"{k} = {v:g}" for k, v in constant.items()), fontsize=8)


def _constant(values) -> bool:
    return len(values) > 1 and all(v == values[0] for v in values)


def panels(rows: list[dict], name: str, keys) -> tuple[list[str], dict]:
    """(metrics drawn, {constant metric: its value}) for one figure. Training panels whose series never changes
    are left out (named in the title) unless nothing else would be drawn; KL to the reference only when non-zero."""
    present = [k for k in keys if _series(rows, k)[0]]
    if name != "training":
        return present, {}
    present = [k for k in present if k != "loss/kl_ref" or not _all_zero(_series(rows, k)[1])]
    constant = {k: _series(rows, k)[1][0] for k in present if _constant(_series(rows, k)[1])}
    drawn = [k for k in present if k not in constant]
    return (drawn, constant) if drawn else (present, {})


def default_note(jsonl_path: Path) -> str:
    """Footer of a figure made from a file alone: its run directory and the file's date."""
    import datetime

    when = datetime.datetime.fromtimestamp(jsonl_path.stat().st_mtime, datetime.timezone.utc)
    return f"{jsonl_path.parent.name}, metrics of {when:%Y-%m-%d %H:%M} UTC"


def plot_metrics(jsonl_path: str | Path, out_dir: str | Path, note: str | None = None) -> list[str]:
    """Write the figures (see module doc) into `out_dir`; a figure none of whose metrics were logged is skipped.
    `note`: the footer (run, date, hardware); default: the run directory and the file's date. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    jsonl_path = Path(jsonl_path)
    rows = read_metrics(jsonl_path)
    note = default_note(jsonl_path) if note is None else note
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keys in FIGURES.items():
        drawn, constant = panels(rows, name, keys)
        if not drawn:
            continue
        size = {"parity": (7, 4.8), "reward": (6.5, 3.9)}.get(name, (6, 1.8 * len(drawn) + 1.1))
        fig = plt.figure(figsize=size)
        if name == "reward":
            _plot_reward(fig, rows)
        elif name == "parity":
            _plot_parity(fig, rows, drawn)
        else:
            _plot_panels(fig, rows, drawn, constant)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths
