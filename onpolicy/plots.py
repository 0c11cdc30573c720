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


def reward_band(rows: list[dict]) -> tuple[list, list, list, list] | None:
    """(steps, mean, lo, hi): mean +- std clipped to each step's [reward/min, reward/max] (when logged);
    None without reward/std."""
    xs, mean = _series(rows, "reward/mean")
    by_step = {r["step"]: r for r in rows}
    if not xs or any(by_step[x].get("reward/std") is None for x in xs):
        return None
    lo, hi = [], []
    for x, m in zip(xs, mean):
        r = by_step[x]
        lo.append(max(m - r["reward/std"], r.get("reward/min", -math.inf)))
        hi.append(min(m + r["reward/std"], r.get("reward/max", math.inf)))
    return xs, mean, lo, hi


def _plot_reward(fig, rows) -> None:
    ax = fig.subplots()
    xs, mean = _series(rows, "reward/mean")
    ax.plot(xs, mean, marker=_marker(xs), color="C0", label="reward/mean")
    band = reward_band(rows)
    if band is not None:
        ax.fill_between(band[0], band[2], band[3], alpha=0.25, color="C0", label="+-std (within the step's min/max)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
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
