"""profile_trainer: where the trainer phase of an RL step spends its time, by category, under torch.profiler.

For each named bench_rl workload (scripts/rl_workloads.py: the same model, weights, engine, KV sizing and batch as
scripts/bench_rl.py) and each system (`invariant`; `default` = `trainer.invariant: false`): one engine rollout,
`--warmup` unprofiled `Trainer.update` calls on its ScoredBatch (the first compiles; the last one's wall time is
`train_s`), then one more update under torch.profiler -- `update_policy`, exactly the trainer's path, with the
coarse scopes of `onpolicy.profiling`. scripts/profile_trainer_trace.py charges every kernel to a category:
GEMMs, attention forward / backward, logprobs + loss, norms, other elementwise, checkpoint recompute, optimizer,
the bf16 copy of the fp32 masters, and host gaps (wall time minus GPU busy time).
MFU = 6 * N * tokens / (peak * seconds): N every parameter of the model counted once (tied embeddings once: the
LM-head GEMM), tokens the prompt + completion tokens trained, peak 989e12 (H100 SXM dense bf16), seconds the
update's wall time; no credit for the recompute. Also GEMM TFLOP/s (6 * decoder-linear parameters * tokens per
GEMM second) and attention TFLOP/s (causal: forward 2 * sum(S^2) * heads * head_dim * layers, backward 2.5x that).
Writes profile_trainer.json (after every run) and profile_trainer.png (date and device in the title) to --out;
prints one table. `--quick`: the tiny model on CPU (CPU ops' self time stands in for kernels; a smoke run).
Left out: multi-GPU strategies, the engine (scripts/profile_engine.py), memory timelines.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import time

import torch

from scripts import profile_trainer_trace as trace
from scripts.common import default_device, device_name
from scripts.rl_workloads import (QUICK_WORKLOADS, WORKLOADS, build_system, check_selection, rollout,
                                  scored_batch, workload_model_config)

PEAK_FLOPS = 989e12  # H100 SXM dense bf16
SYSTEMS = ("invariant", "default")


def flop_counts(model, seq_lens: list[int]) -> dict:
    """Parameter counts and FLOPs of one training pass over sequences of `seq_lens` tokens (see the docstring)."""
    mc, tokens = model.config, sum(seq_lens)
    params = sum(p.numel() for p in model.parameters())
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n)
    attn_fwd = 2 * sum(s * s for s in seq_lens) * mc.num_attention_heads * mc.head_dim * mc.num_hidden_layers
    return {"params": params, "linear_params": linear, "tokens": tokens, "model_flops": 6 * params * tokens,
            "gemm_flops": 6 * linear * tokens, "attention_fwd_flops": attn_fwd, "attention_bwd_flops": 2.5 * attn_fwd}


def _rates(res: dict, flops: dict, train_s: float) -> dict:
    ms = res["categories"]
    rate = lambda f, cat: f / (ms[cat] * 1e9) if ms[cat] > 0 else None  # noqa: E731  TFLOP/s
    return {"mfu": flops["model_flops"] / (PEAK_FLOPS * train_s),
            "mfu_profiled": flops["model_flops"] / (PEAK_FLOPS * res["wall_ms"] / 1e3),
            "gemm_tflops": rate(flops["gemm_flops"], "gemm"),
            "attention_fwd_tflops": rate(flops["attention_fwd_flops"], "attention_fwd"),
            "attention_bwd_tflops": rate(flops["attention_bwd_flops"], "attention_bwd")}


def profile_one(name: str, work, state: dict, system: str, args) -> dict:
    """Rollout, warm-up updates and one profiled update of one (workload, system); -> a result row."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from onpolicy import kernels
    from onpolicy.trainer import FullFineTuning
    from onpolicy.trainer.memory import PhasePeak

    device, invariant = torch.device(args.device), system == "invariant"
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    path = os.path.join(args.out, f"trace_{name}_{system}.json")
    with kernels.invariant_mode(invariant):
        built = build_system(work, state, invariant, args, lambda model, _: FullFineTuning().select(model))
        t0 = time.perf_counter()
        with torch.no_grad():
            ro = rollout(built.llm, work, 0, built.model.config.vocab_size)
        sync()
        sample_s, batch, times = time.perf_counter() - t0, scored_batch(ro, 0), []
        for i in range(args.warmup):
            t0 = time.perf_counter()
            built.trainer.update(batch, i)
            sync()
            times.append(time.perf_counter() - t0)
            print(f"  {name} {system} warm-up update {i}: {times[-1]:.2f} s", flush=True)
        peak = PhasePeak(device)
        peak.start()
        with profile(activities=activities) as prof:
            with record_function(trace.WINDOW):
                built.trainer.update(batch, args.warmup)
                sync()
        peak_gib = peak.gib()
    prof.export_chrome_trace(path)
    flops = flop_counts(built.model, [len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids)])
    del built, prof
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res = trace.analyze_file(path)
    if not args.keep_trace:
        os.remove(path)
    train_s = times[-1] if times else res["wall_ms"] / 1e3
    return {"workload": name, "system": system, "sample_s": sample_s, "train_s": train_s,
            "warmup_s": times, "train_peak_gib": peak_gib, **flops, **_rates(res, flops, train_s), **res}


def table(runs: list[dict]) -> str:
    """Markdown: one row per category, ms and % of the profiled wall time per run; then MFU and rates."""
    head = [f"{r['workload']} {r['system']}" for r in runs]
    lines = ["| category | " + " | ".join(head) + " |", "|---|" + "---|" * len(runs)]
    for cat, label in trace.CATEGORIES.items():
        cells = [f"{r['categories'][cat]:.1f} ms ({100 * r['categories'][cat] / r['wall_ms']:.1f}%)" for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = [("wall (profiled)", lambda r: f"{r['wall_ms']:.1f} ms"),
            ("train_s (unprofiled)", lambda r: f"{r['train_s']:.3f} s"),
            ("tokens", lambda r: f"{r['tokens']:,}"), ("N (parameters)", lambda r: f"{r['params'] / 1e6:.1f}M"),
            ("MFU (unprofiled / profiled)", lambda r: f"{100 * r['mfu']:.1f}% / {100 * r['mfu_profiled']:.1f}%"),
            ("GEMM TFLOP/s", lambda r: fmt(r["gemm_tflops"], ".0f")),
            ("attention fwd / bwd TFLOP/s", lambda r: f"{fmt(r['attention_fwd_tflops'], '.0f')} / "
                                                      f"{fmt(r['attention_bwd_tflops'], '.0f')}")]
    lines += [f"| {label} | " + " | ".join(fn(r) for r in runs) + " |" for label, fn in rows]
    return "\n".join(lines)


def plot(runs: list[dict], title: str, path: str) -> None:
    """One stacked horizontal bar per run: seconds per category of the profiled update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 2.4 + 0.6 * len(runs)))
    names = [f"{r['workload']}\n{r['system']} (MFU {100 * r['mfu']:.1f}%)" for r in runs]
    left = [0.0] * len(runs)
    for i, (cat, label) in enumerate(trace.CATEGORIES.items()):
        secs = [r["categories"][cat] / 1e3 for r in runs]
        ax.barh(names, secs, left=left, label=label, color=f"C{i}")
        left = [a + b for a, b in zip(left, secs)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds of one trainer update (profiled)")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/profile_trainer")
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, 2x4x8 (smoke run)")
    ap.add_argument("--workloads", default=None, help=f"comma separated subset of {', '.join(WORKLOADS)} "
                                                      "(default 0.6b-32x8x512)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="invariant and/or default (trainer.invariant: false)")
    ap.add_argument("--warmup", type=int, default=None, help="unprofiled updates first (default 2; quick 1)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None, help="trainer.micro_batch_tokens override")
    ap.add_argument("--no-checkpointing", action="store_true", help="trainer.activation_checkpointing: false")
    ap.add_argument("--keep-trace", action="store_true", help="keep each run's chrome trace (trace_*.json) in --out")
    args = ap.parse_args(argv)
    args.device = default_device(args.quick)
    args.pool = QUICK_WORKLOADS if args.quick else WORKLOADS
    args.names = args.workloads.split(",") if args.workloads else list(args.pool)[:1] if args.quick \
        else ["0.6b-32x8x512"]
    args.system_list = args.systems.split(",")
    check_selection(args.names, args.pool, args.system_list, SYSTEMS)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.warmup < 0:
        raise SystemExit(f"--warmup: got {args.warmup}; allowed: an int >= 0")
    return args


def main(argv=None) -> int:
    from onpolicy import determinism
    from onpolicy.model import CausalLM

    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    determinism.enable(seed=0)
    device = device_name(args.device)
    meta = {"device": device, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "warmup": args.warmup, "peak_flops": PEAK_FLOPS,
            "mfu": "6 * params * tokens / (peak_flops * train_s); params: every parameter once (tied embeddings "
                   "once), tokens: prompt + completion, train_s: the last unprofiled update's wall time",
            "categories": trace.CATEGORIES}
    runs = []
    for name in args.names:
        work = args.pool[name]
        state = CausalLM(workload_model_config(work)).state_dict()  # bench_rl's weights (seed 0)
        for system in args.system_list:
            runs.append(profile_one(name, work, state, system, args))
            r = runs[-1]
            print(f"  {name} {system}: update {r['train_s']:.2f} s (profiled {r['wall_ms'] / 1e3:.2f} s), "
                  f"MFU {100 * r['mfu']:.1f}%, host gaps {r['categories']['host_gaps'] / r['wall_ms']:.0%}", flush=True)
            with open(os.path.join(args.out, "profile_trainer.json"), "w") as f:
                json.dump({"meta": meta, "runs": runs}, f, indent=1)
    print(table(runs))
    plot(runs, f"Trainer update by category -- {device}, {meta['date']}", os.path.join(args.out, "profile_trainer.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
