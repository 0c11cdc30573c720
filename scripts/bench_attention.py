"""Benchmark attention -- training forward, training backward, paged decode -- against torch SDPA's fastest
backend, measured in the same run.

Per case every SDPA backend that runs (flash, cuDNN, memory-efficient) is timed, with torch's deterministic
mode off (it would slow SDPA's backward and turn cuDNN's off), and the fastest is the baseline; the ratio is
baseline_ms / ours_ms (>1 = ours faster). Forward: causal attention over equal-length packed sequences (ours:
`attention_varlen`; SDPA: the same batch, dense). Backward: the backward pass alone (`autograd.grad` of one
recorded forward), for ours and for the fastest SDPA backend of that pass; ours gets the model's `max_keys`
hint. Decode: one query per sequence over a paged cache of 16-token blocks (ours: `kernels.attention`, the
engine's call) vs SDPA on the same keys laid out densely; `hbm` = fraction of 3.0 TB/s that ours reaches on
the K/V bytes. Times are medians: training on CUDA `do_bench` (eager, cold L2); decode on CUDA GPU time from
CUDA-graph replays, as the engine runs it, over enough copies of the cache that every call reads its K/V from
HBM, not L2; CPU `--reps` calls. Writes a table, `attention.json` and `attention.png` to `--out`.
`--head-dim` picks a model's heads (64: Qwen3 heads at 64, 96: Phi-3-mini, 128: Qwen3, 256: Gemma-3-4B);
`--window N` runs every case with an N-key sliding window: ours takes `window=N`; the baseline forward and
backward are SDPA with an explicit band mask (the backends that take one) and, where this torch has it, flash
varlen with `window_size` (`invariant_mode(False)`'s training path); decode's baseline is SDPA over each
sequence's last N keys laid out densely. Work (FLOPs, bytes) counts only the keys inside the window.

    python -m scripts.bench_attention                             # CUDA: Qwen3 heads (H100)
    python -m scripts.bench_attention --head-dim 256 --window 1024  # Gemma-3-4B heads, its sliding window
    python -m scripts.bench_attention --quick                     # tiny shapes; also runs on CPU

Left out: fp32, flex_attention (compile time), a non-invariant split-KV baseline of our own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os

import torch
import torch.nn.functional as F

from onpolicy import kernels
from scripts.common import (HBM_BYTES_PER_S, QWEN3_HEAD_DIM, QWEN3_SHAPES, bench, default_device, device_name,
                            graph_ms)

HEADS = {64: (16, 8), 96: (32, 32), 128: QWEN3_SHAPES["0.6B"][2:], 256: (8, 4)}  # head_dim -> (Hq, Hkv) of a model


def shapes(quick: bool, head_dim: int = QWEN3_HEAD_DIM) -> dict:
    """(batch, length, Hq, Hkv, head_dim) cases: the model's heads (`HEADS`); at 128 also Qwen3-8B's (32 q heads)
    for one forward."""
    if quick:
        return dict(train=[(2, 64, 4, 2, head_dim)], decode=[(b, 128, 4, 2, head_dim) for b in (1, 4)])
    small = HEADS[head_dim]
    large = QWEN3_SHAPES["8B"][2:] if head_dim == QWEN3_HEAD_DIM else small
    train = [(1, 512, *small), (16, 512, *small), (4, 1024, *large), (8, 2048, *small)]
    return dict(train=[(*c, head_dim) for c in train],
                decode=[(b, n, *small, head_dim) for b in (1, 16, 64, 256) for n in (512, 2048, 8192)])


def _backends(dev: str) -> dict:
    from torch.nn.attention import SDPBackend
    if dev != "cuda":
        return {"default": None}
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def _sdpa(backend, q, k, v, causal, mask=None):
    """q [B, S, Hq, D], k/v [B, L, Hkv, D] through one SDPA backend (None: torch's choice); `mask` replaces
    `causal` when given."""
    from torch.nn.attention import sdpa_kernel
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    with contextlib.nullcontext() if backend is None else sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                              enable_gqa=True)


def _window_pairs(s: int, window: int | None) -> int:
    """(query, key) pairs of one causal sequence of s tokens with a window of `window` keys (None: all)."""
    w = s if window is None else min(window, s)
    return w * (w + 1) // 2 + (s - w) * w


L2_SPAN_BYTES = 128 << 20  # decode timing: cache copies read per graph replay, > the H100's 50 MB L2


def _fastest(fns: dict, dev: str, reps: int, timer=None) -> tuple[str, float]:
    """(name, ms) of the fastest callable (timed by timer(fn), default `bench`); ones that raise (backend
    unsupported here) are skipped."""
    best = ("none", float("inf"))
    for name, fn in fns.items():
        try:
            fn()
        except RuntimeError:
            continue
        ms = timer(fn) if timer else bench(fn, dev, reps)
        best = min(best, (name, ms), key=lambda x: x[1])
    return best


def _grad_fn(out_fn, leaves):
    """fn() -> gradients of one recorded out_fn(*leaves) against a fixed random cotangent: the backward alone."""
    out = out_fn(*leaves)
    grad_out = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True)


def train_case(b, s, hq, hkv, d, dev, reps, window=None) -> list[dict]:
    g = torch.Generator(device=dev).manual_seed(0)
    mk = lambda h: torch.randn(b * s, h, d, device=dev, dtype=torch.bfloat16, generator=g)  # noqa: E731
    q, k, v = mk(hq), mk(hkv), mk(hkv)
    cu = torch.arange(0, b * s + 1, s, device=dev, dtype=torch.int32)
    dense = lambda t: t.view(b, s, *t.shape[1:])  # noqa: E731
    ours = lambda q_, k_, v_: kernels.attention_varlen(q_, k_, v_, cu, max_keys=s, window=window)  # noqa: E731
    mask = None
    if window is not None:
        pos = torch.arange(s, device=dev)
        mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
    base = {n: (lambda be: lambda q_, k_, v_: _sdpa(be, dense(q_), dense(k_), dense(v_), True, mask))(be)
            for n, be in _backends(dev).items()}
    if window is not None and dev == "cuda":
        base["flash_varlen"] = _flash_varlen_window(cu, window)
    flops = 4 * b * hq * d * _window_pairs(s, window)  # two causal matmuls
    shape = f"B={b} S={s} Hq={hq} Hkv={hkv} D={d}" + ("" if window is None else f" W={window}")
    with torch.no_grad():
        fwd_ours = bench(lambda: ours(q, k, v), dev, reps)
        fwd_name, fwd_base = _fastest({n: (lambda f: lambda: f(q, k, v))(f) for n, f in base.items()}, dev, reps)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    bwd_ours = bench(_grad_fn(ours, leaves), dev, reps)
    bwd = {}
    for n, f in base.items():
        try:
            bwd[n] = _grad_fn(f, leaves)
        except RuntimeError:
            continue
    bwd_name, bwd_base = _fastest(bwd, dev, reps)
    rows = [dict(op="forward", shape=shape, ours_ms=fwd_ours, base_ms=fwd_base, base=fwd_name, work=flops),
            dict(op="backward", shape=shape, ours_ms=bwd_ours, base_ms=bwd_base, base=bwd_name, work=2.5 * flops)]
    for r in rows:
        r.update(unit="TFLOP/s", ours_rate=r["work"] / r["ours_ms"] * 1e-9, base_rate=r["work"] / r["base_ms"] * 1e-9)
    return rows


def _flash_varlen_window(cu, window):
    """The non-invariant stack's windowed training attention (flash varlen where this torch takes a window)."""
    def run(q_, k_, v_):
        with kernels.invariant_mode(False):
            return kernels.attention_varlen(q_, k_, v_, cu, window=window)
    return run


def decode_case(b, n, hq, hkv, d, dev, reps, window=None, block_size=16) -> list[dict]:
    g = torch.Generator(device=dev).manual_seed(0)
    nb = -(-n // block_size)
    q = torch.randn(b, hq, d, device=dev, dtype=torch.bfloat16, generator=g)
    k_cache, v_cache = (torch.randn(b * nb * block_size, hkv, d, device=dev, dtype=torch.bfloat16, generator=g)
                        for _ in range(2))
    table = torch.randperm(b * nb, device=dev, generator=g).to(torch.int32).view(b, nb)
    cu, lens = torch.arange(b + 1, device=dev, dtype=torch.int32), torch.full((b,), n, device=dev, dtype=torch.int32)
    offs = torch.zeros(b, device=dev, dtype=torch.int32)
    slots = (table.long()[:, :, None] * block_size + torch.arange(block_size, device=dev)).view(b, -1)[:, :n]
    seen = n if window is None else min(n, window)  # keys each query reads
    work = 2 * b * seen * hkv * d * 2
    copies = max(1, min(64, -(-L2_SPAN_BYTES // work))) if dev == "cuda" else 1
    caches = [(k_cache, v_cache)] + [(k_cache.clone(), v_cache.clone()) for _ in range(copies - 1)]
    dense = [(kc[slots[:, n - seen:]], vc[slots[:, n - seen:]]) for kc, vc in caches]  # [B, seen, Hkv, D]
    timer = (lambda fn: graph_ms(fn, copies)) if dev == "cuda" else (lambda fn: bench(fn, dev, reps))  # noqa: E731
    with torch.no_grad():
        ours = timer(lambda: [kernels.attention(q, kc, vc, cu, lens, table, offs, block_size, window=window)
                              for kc, vc in caches])
        name, base = _fastest({nm: (lambda be: lambda: [_sdpa(be, q[:, None], kd, vd, False) for kd, vd in dense])(be)
                               for nm, be in _backends(dev).items()}, dev, reps, timer)
    shape = f"B={b} L={n} Hq={hq} Hkv={hkv} D={d}" + ("" if window is None else f" W={window}")
    return [dict(op="decode", shape=shape, ours_ms=ours, base_ms=base, base=name,
                 work=work, unit="GB/s", ours_rate=work / ours * 1e-6, base_rate=work / base * 1e-6,
                 hbm=work / (ours * 1e-3) / HBM_BYTES_PER_S)]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 6))
    colors = {"forward": "tab:blue", "backward": "tab:orange", "decode": "tab:green"}
    ax.bar(range(len(rows)), [r["ratio"] for r in rows], color=[colors[r["op"]] for r in rows])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.8, color="gray", lw=0.8, ls="--", label="target 0.8x")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['op']} {r['shape']} (vs {r['base']})" for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("throughput: ours / fastest SDPA")
    ax.set_title("batch-invariant attention vs torch SDPA (blue fwd, orange bwd, green decode)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (runs on CPU in seconds)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench_out", help="directory for attention.json and attention.png")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per case on CPU (CUDA uses do_bench)")
    p.add_argument("--head-dim", type=int, default=QWEN3_HEAD_DIM, choices=sorted(HEADS),
                   help="head_dim; the heads of a model with it (see HEADS)")
    p.add_argument("--window", type=int, default=None, help="sliding window in keys for every case (default: none)")
    args = p.parse_args(argv)
    dev = default_device() if args.device == "auto" else args.device
    if dev == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    torch.manual_seed(0)  # torch's deterministic mode stays off: it slows SDPA's backward and disables cuDNN's
    rows = []
    print(f"{'op':<9} {'shape':<38} {'ours_ms':>9} {'base_ms':>9} {'ours':>8} {'base':>8} {'unit':<8} {'ratio':>6} "
          f"{'baseline':<10} {'hbm':>5}")
    if args.window is not None and args.window < 1:
        p.error("--window must be a positive int")
    cases = shapes(args.quick, args.head_dim)
    for fn, key in ((train_case, "train"), (decode_case, "decode")):
        for shape in cases[key]:
            for r in fn(*shape, dev, args.reps, args.window):
                r["ratio"] = r["base_ms"] / r["ours_ms"]
                rows.append(r)
                hbm = f"{r['hbm']:>5.2f}" if "hbm" in r else ""
                print(f"{r['op']:<9} {r['shape']:<38} {r['ours_ms']:>9.4f} {r['base_ms']:>9.4f} {r['ours_rate']:>8.1f} "
                      f"{r['base_rate']:>8.1f} {r['unit']:<8} {r['ratio']:>6.2f} {r['base']:<10} {hbm}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    name = device_name(dev)
    with open(os.path.join(args.out, "attention.json"), "w") as f:
        json.dump(dict(meta=dict(device=name, torch=torch.__version__, quick=args.quick, head_dim=args.head_dim,
                                 window=args.window), results=rows), f, indent=1)
    plot(rows, os.path.join(args.out, "attention.png"))
    print(f"wrote {args.out}/attention.json and attention.png")
    return rows


if __name__ == "__main__":
    main()
