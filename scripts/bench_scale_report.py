"""Join bench_scale.json and bench_reduce.json files from several launches into one JSON, a markdown table and
a PNG: seconds per step (sample + train) with peak memory per run, and the fixed-order tree's collective time
against all_reduce per gradient size.

    python -m scripts.bench_scale_report --out docs/bench/scale_h200x2 a/bench_scale.json b/bench_reduce.json

Left out: measuring anything (scripts/bench_scale.py and scripts/bench_reduce.py measure).
"""
from __future__ import annotations

import argparse
import json
import os


def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """-> (bench_scale runs, each with its size, steps and max_tokens; bench_reduce tables, one per file)."""
    runs, reduces = [], []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        if "world" in d:  # bench_reduce
            reduces.append({**d, "source": path})
        else:
            runs += [{**r, "size": d["size"], "steps": d.get("steps"), "max_tokens": d.get("max_tokens")}
                     for r in d["results"]]
    return runs, reduces


def table(runs: list[dict], reduces: list[dict]) -> str:
    lines = ["| size | variant | world | chunks | steps | s/step | sample s | train s | peak GiB | KL every step | "
             "weights sha256 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['size']} | {r['variant']} | {r['world_size']} | {r['chunks']} | {r['steps']} | "
                     f"{r['s_per_step']:.2f} | {r['s_sample']:.2f} | {r['s_train']:.2f} | {r['peak_gib']:.1f} | "
                     f"{sorted(set(r['kl_every_step']))} | {r['weights_sha256'][:12]} |")
    for d in reduces:
        lines += ["", f"world {d['world']} ({d['device']}, {os.path.basename(os.path.dirname(d['source']))}):",
                  "| gradient | all_reduce ms | tree ms | tree / all_reduce |", "|---|---|---|---|"]
        for name, r in d["results"].items():
            lines.append(f"| {name} | {r['all_reduce'] * 1e3:.2f} | {r['tree'] * 1e3:.2f} | "
                         f"{r['tree'] / r['all_reduce']:.2f} |")
    return "\n".join(lines)


def plot(runs: list[dict], reduces: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r['size']} {r['variant']}\nW={r['world_size']}" for r in runs]
    xs = range(len(runs))
    a.bar(xs, [r["s_sample"] for r in runs], label="sample")
    a.bar(xs, [r["s_train"] for r in runs], bottom=[r["s_sample"] for r in runs], label="train")
    for x, r in zip(xs, runs):
        a.text(x, r["s_sample"] + r["s_train"], f"{r['peak_gib']:.0f} GiB", ha="center", va="bottom", fontsize=8)
    a.set_xticks(list(xs), labels, fontsize=7)
    a.set_ylabel("seconds per RL step (median)")
    a.set_title("RL step per launch (label: rank 0 peak memory); KL 0.0 every step")
    a.legend()
    for d in reduces:
        names = list(d["results"])
        ratio = [d["results"][n]["tree"] / d["results"][n]["all_reduce"] for n in names]
        b.plot(names, ratio, marker="o", label=f"W={d['world']} {os.path.basename(os.path.dirname(d['source']))}")
    b.axhline(1.0, color="gray", lw=0.8)
    b.set_ylim(0, max([2.0] + [d["results"][n]["tree"] / d["results"][n]["all_reduce"]
                               for d in reduces for n in d["results"]]) * 1.1)
    b.set_ylabel("tree_sum_ time / all_reduce time")
    b.set_title("fixed-order gradient sum vs NCCL all_reduce")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True, help="path prefix: writes <out>.json, <out>.md, <out>.png")
    args = p.parse_args(argv)
    runs, reduces = load(args.paths)
    text = table(runs, reduces)
    print(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"runs": runs, "reductions": reduces}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(text + "\n")
    plot(runs, reduces, args.out + ".png")


if __name__ == "__main__":
    main()
