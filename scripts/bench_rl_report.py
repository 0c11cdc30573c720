"""bench_rl's output: the JSON file, the markdown table with ratios, the PNG, and the merge of several runs' JSONs.

A run writes {"meta": ..., "results": [rows]}; a row has workload, system, step_s, peak_gib (None off CUDA) and,
when measured, sample_s / train_s and the per-phase peaks. Ratios are against the same workload's onpolicy
invariant row (time and peak). `merge` takes rows from several files, a later file's row replacing an earlier
one of the same (workload, system), and keeps every file's meta. Left out: error bars (rows are means).
"""
from __future__ import annotations

import json

SYSTEMS = ("invariant", "default", "trl")


def write_json(path: str, meta: dict, results: list) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


def merge(paths: list[str]) -> tuple[dict, list]:
    """(meta, rows) of several bench_rl.json files; a later file's (workload, system) row wins."""
    rows, metas = {}, []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        metas.append({"file": path, **data["meta"]})
        for r in data["results"]:
            rows[(r["workload"], r["system"])] = r
    order = list(dict.fromkeys(w for w, _ in rows))
    rank = {s: i for i, s in enumerate(SYSTEMS)}
    results = sorted(rows.values(), key=lambda r: (order.index(r["workload"]), rank.get(r["system"], 99)))
    return {"merged": metas}, results


def _ratio(value, base) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def table(results) -> str:
    """Markdown: one row per (workload, system), ratios vs the workload's invariant row."""
    lines = ["| workload | system | s/step (sample + train) | peak GiB (sample / train) | time vs invariant | "
             "peak vs invariant |", "|---|---|---|---|---|---|"]
    inv = {r["workload"]: r for r in results if r["system"] == "invariant"}
    for r in results:
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        if r.get("sample_peak_gib") is not None:
            peak += f" ({r['sample_peak_gib']:.1f} / {r['train_peak_gib']:.1f})"
        split = f" ({r['sample_s']:.2f} + {r['train_s']:.2f})" if "sample_s" in r else ""
        base = inv.get(r["workload"], {})
        system = r["system"] + (" (recorded)" if r.get("recorded") else "")
        lines.append(f"| {r['workload']} | {system} | {r['step_s']:.2f}{split} | {peak} | "
                     f"{_ratio(r['step_s'], base.get('step_s'))} | {_ratio(r.get('peak_gib'), base.get('peak_gib'))} |")
    return "\n".join(lines)


def title(meta: dict) -> str:
    """'bench_rl, <device>, <date>' from a run's meta (a merge: its files' devices and dates)."""
    parts = meta.get("merged", [meta])
    devices = sorted({m.get("device", "?") for m in parts})
    dates = sorted({m.get("date", "date not recorded") for m in parts})
    return f"bench_rl, {' / '.join(devices)}, {' / '.join(dates)}"


def systems_ran(results) -> list[str]:
    """The systems in the rows: the standard ones in their order, then the others (e.g. invariant+lora32)."""
    seen = list(dict.fromkeys(r["system"] for r in results))
    return [s for s in SYSTEMS if s in seen] + [s for s in seen if s not in SYSTEMS]


def plot(results, path, heading: str = "") -> None:
    """Two bar charts (s/step, peak GiB) by workload, one bar per system that ran (one colour per system)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["workload"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ran = systems_ran(results)
    width = 0.8 / len(ran)
    extra = [s for s in ran if s not in SYSTEMS]
    colours = {s: f"C{i}" for i, s in enumerate([*SYSTEMS, *extra])}  # a standard system keeps its colour
    for j, system in enumerate(ran):
        by = {r["workload"]: r for r in results if r["system"] == system}
        xs = [i + j * width for i, n in enumerate(names) if n in by]
        frozen = any(r.get("frozen_base") for r in by.values())
        label = system + (" (no adapters, base frozen)" if frozen else "")
        style = dict(width=width, label=label, color=colours[system])
        axes[0].bar(xs, [by[n]["step_s"] for n in names if n in by], **style)
        axes[1].bar(xs, [by[n]["peak_gib"] or 0.0 for n in names if n in by], **style)
    for ax, label in zip(axes, ("seconds per RL step", "peak GPU memory (GiB)")):
        ax.set_xticks([i + width * (len(ran) - 1) / 2 for i in range(len(names))], names)
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ran), frameon=False)
    if heading:
        fig.suptitle(heading)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
