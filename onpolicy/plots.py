"""metrics.jsonl -> PNGs a person can read: reward.png, parity.png, training.png (used by `RunLogger.close()`
and `scripts/plot_run.py`).

reward.png: reward/mean with a +-std band clipped to each step's [reward/min, reward/max] (so a 0-1 reward's band
stays in 0-1). parity.png: one small panel per parity metric, with markers, so four lines at 0.0 cannot hide
each other; a title says "all exactly 0.0" only when every logged value is exactly 0.0. training.png: what tells
a user how the update goes -- grad norm, clip fraction, completion length and truncation, KL to the reference
(only when it is non-zero). The GRPO loss itself is not plotted: with group-normalised advantages it is ~0 by
construction. Left out: comparing several runs, smoothing.
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


def _plot_reward(fig, rows) -> None:
    ax = fig.subplots()
    xs, mean = _series(rows, "reward/mean")
    ax.plot(xs, mean, marker=_marker(xs), color="C0", label="reward/mean")
    by_step = {r["step"]: r for r in rows}
    band = [(x, by_step[x].get("reward/std"), by_step[x].get("reward/min"), by_step[x].get("reward/max"))
            for x in xs]
    if all(b[1] is not None for b in band):
        lo = [max(m - s, rmin if rmin is not None else -math.inf) for m, (_, s, rmin, _) in zip(mean, band)]
        hi = [min(m + s, rmax if rmax is not None else math.inf) for m, (_, s, _, rmax) in zip(mean, band)]
        ax.fill_between(xs, lo, hi, alpha=0.25, color="C0", label="+-std (within the step's min/max)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_xlabel("step")


def _all_zero(values) -> bool:
    return bool(values) and all(v == 0 for v in values)


def _plot_parity(fig, rows, keys) -> None:
    axes = fig.subplots(2, 2, sharex=True, squeeze=False).reshape(-1)
    for ax, key in zip(axes, keys):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker="o", markersize=3, linestyle="-", color="C3" if not _all_zero(ys) else "C2")
        if _all_zero(ys):
            ax.set_title(f"{key}: all exactly 0.0", fontsize=9)
            ax.set_ylim(-1, 1)
        else:
            bad = sum(1 for v in ys if v != 0)
            ax.set_title(f"{key}: {bad}/{len(ys)} steps not 0.0", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax in axes[-2:]:
        ax.set_xlabel("step")
    exact = all(_all_zero(_series(rows, k)[1]) for k in keys)
    fig.suptitle("sampler vs trainer logprobs: " + ("all exactly 0.0 at every step" if exact
                                                    else "NOT bitwise equal"), fontsize=10)


def _plot_panels(fig, rows, keys) -> None:
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False).reshape(-1)
    for i, (ax, key) in enumerate(zip(axes, keys)):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker=_marker(xs), color=f"C{i}")
        ax.set_ylabel(key.replace("/", "/\n"), fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")


def _present(rows, name, keys) -> list[str]:
    present = [k for k in keys if _series(rows, k)[0]]
    if name == "training":  # KL to the reference only exists (non-zero) with trainer.beta > 0
        present = [k for k in present if k != "loss/kl_ref" or not _all_zero(_series(rows, k)[1])]
    return present


def plot_metrics(jsonl_path: str | Path, out_dir: str | Path) -> list[str]:
    """Write the figures (see module doc) into `out_dir`; a figure none of whose metrics were logged is skipped.
    Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = read_metrics(jsonl_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keys in FIGURES.items():
        present = _present(rows, name, keys)
        if not present:
            continue
        fig = plt.figure(figsize=(7, 4.5) if name == "parity" else (6, 1.8 * len(present) + 0.8
                                                                     if name == "training" else 3.5))
        if name == "reward":
            _plot_reward(fig, rows)
        elif name == "parity":
            _plot_parity(fig, rows, present)
        else:
            _plot_panels(fig, rows, present)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths
