"""Benchmark onpolicy's batch-invariant kernels against torch's default ops, measured in the same run.

Per op and shape: median time of ours and of the baseline, TFLOP/s (GEMM-like ops) or GB/s (memory-bound
ops), the throughput ratio ours/baseline (>1 = ours faster), and whether each side was batch invariant on that
shape (row / sequence 0 computed alone vs inside the full batch, `torch.equal`). Times are eager calls with a
cold L2 (`do_bench`), so small shapes include host launch overhead. For `linear` on CUDA also the GPU time
alone (`graph`: CUDA-graph replays over enough weight copies that each call reads its weight from HBM), its
ratio, and `hbm`: the fraction of 3.0 TB/s (measured device copy rate) that ours reaches on the bytes it must
move. Writes a table to stdout and `results.json` + `ratios.png` to `--out`.

    python -m scripts.bench_kernels                # CUDA: Qwen3-0.6B/1.7B/8B shapes (H100)
    python -m scripts.bench_kernels --quick        # tiny shapes; also runs on CPU
    python -m scripts.bench_kernels --ops linear,token_logprobs

Baselines: linear -> F.linear (cuBLAS/MKL), rms_norm / silu_mul -> the torch reference ops, log_softmax ->
torch.log_softmax of fp32 logits, token_logprobs -> F.linear + log_softmax + gather. Attention has its own
benchmark (scripts/bench_attention.py: forward, backward and decode vs SDPA's fastest backend).
Left out: backward passes, fp16, graph timing for ops other than linear, multi-GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

from onpolicy import determinism, kernels
from scripts.common import (HBM_BYTES_PER_S, QWEN3_SHAPES, QWEN3_VOCAB, bench, default_device, device_name,
                            graph_ms, rows_invariant)

EPS = 1e-6
GRAPH_WEIGHT_BYTES = 2e8  # graph timing rotates weight copies until this many bytes: every call misses L2
OPS = ("linear", "rms_norm", "silu_mul", "log_softmax", "token_logprobs")


def shapes(quick: bool) -> dict:
    """Cases per op. Full: Qwen3 shapes on CUDA; quick: scaled-down shapes that run on CPU in seconds."""
    bf, f32 = torch.bfloat16, torch.float32
    if quick:
        return {
            "linear": [(m, 256, 512, bf) for m in (1, 16, 64)] + [(16, 256, 512, f32)],
            "rms_norm": [(m, 256, bf) for m in (1, 64)],
            "silu_mul": [(m, 512, bf) for m in (1, 64)],
            "log_softmax": [(m, 5000, f32) for m in (1, 16)],
            "token_logprobs": [(m, 64, 5000, bf) for m in (1, 16)],
        }
    kn = [(h, i) for h, i, _, _ in QWEN3_SHAPES.values()] + [(i, h) for h, i, _, _ in QWEN3_SHAPES.values()] + [(6144, 2048)]
    return {
        "linear": [(m, k, n, bf) for k, n in kn for m in (1, 16, 64, 256, 1024, 4096)]
        + [(m, h, QWEN3_VOCAB, bf) for h in (1024, 2048, 4096) for m in (1, 16, 64, 256, 1024, 4096)]
        + [(m, 1024, 3072, f32) for m in (16, 1024)],
        "rms_norm": [(m, h, bf) for h in (1024, 2048, 4096) for m in (1, 64, 1024, 4096)] + [(1024, 1024, f32)],
        "silu_mul": [(m, i, bf) for i in (3072, 6144, 12288) for m in (1, 64, 1024, 4096)] + [(1024, 3072, f32)],
        "log_softmax": [(m, QWEN3_VOCAB, f32) for m in (1, 64, 1024)],
        "token_logprobs": [(m, h, QWEN3_VOCAB, bf) for h in (1024, 4096) for m in (1, 64, 1024, 4096)]
        + [(64, 1024, QWEN3_VOCAB, f32)],
    }


def _rand(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def case_linear(m, k, n, dtype, dev):
    x, w = _rand(m, k, dtype=dtype, device=dev), _rand(n, k, dtype=dtype, device=dev, scale=k**-0.5)
    case = dict(shape=f"M={m} K={k} N={n}", work=2 * m * k * n, unit="TFLOP/s",
                ours=lambda: kernels.linear(x, w), base=lambda: F.linear(x, w),
                ours_one=lambda: kernels.linear(x[:1], w), base_one=lambda: F.linear(x[:1], w))
    if dev == "cuda":
        copies = [w] + [w.clone() for _ in range(min(63, int(GRAPH_WEIGHT_BYTES // w.nbytes)))]
        case.update(bytes=(m * k + n * k + m * n) * x.element_size(), graph_calls=len(copies),
                    ours_graph=lambda: [kernels.linear(x, wi) for wi in copies],
                    base_graph=lambda: [F.linear(x, wi) for wi in copies])
    return case


def case_rms_norm(m, h, dtype, dev):
    x, w = _rand(m, h, dtype=dtype, device=dev), _rand(h, dtype=dtype, device=dev)
    ref = kernels.rms_norm_reference
    return dict(shape=f"M={m} H={h}", work=(2 * m * h + h) * x.element_size(), unit="GB/s",
                ours=lambda: kernels.rms_norm(x, w, EPS), base=lambda: ref(x, w, EPS),
                ours_one=lambda: kernels.rms_norm(x[:1], w, EPS), base_one=lambda: ref(x[:1], w, EPS))


def case_silu_mul(m, i, dtype, dev):
    g, u = _rand(m, i, dtype=dtype, device=dev), _rand(m, i, dtype=dtype, device=dev)
    ref = kernels.silu_mul_reference
    return dict(shape=f"M={m} I={i}", work=3 * m * i * g.element_size(), unit="GB/s",
                ours=lambda: kernels.silu_mul(g, u), base=lambda: ref(g, u),
                ours_one=lambda: kernels.silu_mul(g[:1], u[:1]), base_one=lambda: ref(g[:1], u[:1]))


def case_log_softmax(m, v, dtype, dev):
    x = _rand(m, v, dtype=dtype, device=dev, scale=4.0)
    ref = kernels.log_softmax_reference
    return dict(shape=f"M={m} V={v}", work=m * v * (x.element_size() + 4), unit="GB/s",
                ours=lambda: kernels.log_softmax(x), base=lambda: ref(x),
                ours_one=lambda: kernels.log_softmax(x[:1]), base_one=lambda: ref(x[:1]))


def _torch_token_logprobs(h, w, t):
    return torch.log_softmax(F.linear(h, w).float(), -1).gather(-1, t[:, None])[:, 0]


def case_token_logprobs(m, h, v, dtype, dev):
    x, w = _rand(m, h, dtype=dtype, device=dev), _rand(v, h, dtype=dtype, device=dev, scale=h**-0.5)
    t = torch.randint(0, v, (m,), device=dev)
    return dict(shape=f"M={m} H={h} V={v}", work=2 * m * h * v, unit="TFLOP/s",
                ours=lambda: kernels.token_logprobs(x, w, t), base=lambda: _torch_token_logprobs(x, w, t),
                ours_one=lambda: kernels.token_logprobs(x[:1], w, t[:1]),
                base_one=lambda: _torch_token_logprobs(x[:1], w, t[:1]))


CASES = {name: globals()[f"case_{name}"] for name in OPS}


def run_case(op: str, args: tuple, dev: str, reps: int) -> dict:
    dtype = args[-1]
    rec = dict(op=op, dtype=str(dtype).replace("torch.", ""))
    try:
        with torch.inference_mode():
            c = CASES[op](*args, dev)
            rec.update(shape=c["shape"], unit=c["unit"])
            rec["base_invariant"] = rows_invariant(c["base"], c["base_one"])
            rec["ours_invariant"] = rows_invariant(c["ours"], c["ours_one"])
            rec["ours_ms"], rec["base_ms"] = bench(c["ours"], dev, reps), bench(c["base"], dev, reps)
            if "ours_graph" in c:
                rec["ours_graph_ms"] = graph_ms(c["ours_graph"], c["graph_calls"])
                rec["base_graph_ms"] = graph_ms(c["base_graph"], c["graph_calls"])
                rec["graph_ratio"] = rec["base_graph_ms"] / rec["ours_graph_ms"]
                rec["hbm"] = c["bytes"] / (rec["ours_graph_ms"] * 1e-3) / HBM_BYTES_PER_S
        scale = 1e-9 if c["unit"] == "TFLOP/s" else 1e-6  # work per ms -> TFLOP/s or GB/s
        rec["ours_rate"] = c["work"] / rec["ours_ms"] * scale
        rec["base_rate"] = c["work"] / rec["base_ms"] * scale
        rec["ratio"] = rec["base_ms"] / rec["ours_ms"]
    except Exception as exc:  # a placeholder or a failing kernel must not hide the other results
        rec.update(shape=rec.get("shape", str(args[:-1])), error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if dev == "cuda":
            torch.cuda.empty_cache()
    return rec


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['op']:<18} {r['dtype']:<8} {r['shape']:<34} ERROR {r['error']}"
    inv = lambda b: "yes" if b else "NO"  # noqa: E731
    graph = (f" {r['ours_graph_ms']:>9.4f} {r['base_graph_ms']:>9.4f} {r['graph_ratio']:>6.2f} {r['hbm']:>5.2f}"
             if "graph_ratio" in r else "")
    return (f"{r['op']:<18} {r['dtype']:<8} {r['shape']:<34} {r['ours_ms']:>9.4f} {r['base_ms']:>9.4f} "
            f"{r['ours_rate']:>9.2f} {r['base_rate']:>9.2f} {r['unit']:<8} {r['ratio']:>6.2f} "
            f"{inv(r['ours_invariant']):>6} {inv(r['base_invariant']):>6}{graph}")


HEADER = (f"{'op':<18} {'dtype':<8} {'shape':<34} {'ours_ms':>9} {'base_ms':>9} {'ours':>9} {'base':>9} "
          f"{'unit':<8} {'ratio':>6} {'ours=':>6} {'base=':>6} {'ours_gms':>9} {'base_gms':>9} {'gratio':>6} "
          f"{'hbm':>5}")


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "ratio" in r]
    if not ok:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(ok)), 5))
    colors = ["tab:green" if r["ratio"] >= 1 else "tab:red" for r in ok]
    ax.bar(range(len(ok)), [r["ratio"] for r in ok], color=colors, label="eager (cold L2, host launch included)")
    graph = [(i, r["graph_ratio"]) for i, r in enumerate(ok) if "graph_ratio" in r]
    if graph:
        ax.plot(*zip(*graph), "k.", ms=4, label="GPU time only (CUDA graph)")
        ax.legend(fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    for target in (0.8, 0.9):  # the linear kernel's targets vs cuBLAS (M < 256 and M >= 256)
        ax.axhline(target, color="gray", lw=0.6, ls="--")
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels([f"{r['op']} {r['dtype']} {r['shape']}" for r in ok], rotation=90, fontsize=6)
    ax.set_ylabel("throughput ours / baseline")
    ax.set_yscale("log")
    ax.set_title("batch-invariant kernels vs torch defaults (>1: ours faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (runs on CPU in seconds)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench_out", help="directory for results.json and ratios.png")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per case on CPU (CUDA uses do_bench)")
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        p.error(f"--ops: unknown {bad}; allowed: {', '.join(OPS)}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    args.ops = ops
    if args.device == "auto":
        args.device = default_device()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.device == "cpu" and not args.quick:
        print("note: full shapes on CPU are very slow; consider --quick", file=sys.stderr)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    determinism.enable(seed=0)
    dev = args.device
    name = device_name(dev)
    print(f"device: {name}  torch {torch.__version__}  ratio = baseline_ms / ours_ms  "
          f"(ours= / base=: row 0 alone == row 0 in batch)")
    print(HEADER)
    records = []
    for op, cases in shapes(args.quick).items():
        if op not in args.ops:
            continue
        for case in cases:
            rec = run_case(op, case, dev, args.reps)
            records.append(rec)
            print(format_row(rec), flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(device=name, torch=torch.__version__, quick=args.quick)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, results=records), f, indent=1)
    plot(records, os.path.join(args.out, "ratios.png"))
    ok = [r["ratio"] for r in records if "ratio" in r]
    if ok:
        geo = math.exp(sum(math.log(x) for x in ok) / len(ok))
        print(f"geomean ratio over {len(ok)} cases: {geo:.3f}; errors: {len(records) - len(ok)}; "
              f"wrote {args.out}/results.json and ratios.png")
    return records


if __name__ == "__main__":
    main()
