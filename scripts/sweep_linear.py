"""Tile-config sweep of the TMA `linear` GEMM against cuBLAS, plus where small-M time goes (dev tool, CUDA).

Part A (--part host): per shape, cold-L2 `do_bench` median (as bench_kernels.py), CUDA-graph replay time over
rotating weight copies (GPU time only), and host time per eager call, for F.linear, the pointer GEMM, the
TMA GEMM launched directly and `kernels.linear`. Part B (--part sweep): cold-L2 median of each candidate
config on Qwen3 shapes; each config is also checked against F.linear (allclose) and for a row alone == the
same row inside M=4096 (torch.equal). Writes JSON to --out; prints the best config per shape last.
Part C (--part probe): candidate configs per shape with each schedule forced (whole-K, split with and
without the PDL piece sum), CUDA-graph time ratio vs cuBLAS, and `same`: whether the config's whole-K output
equals the current config's bitwise (a tile change that keeps the K order -- 64-row tiles -- may keep the bits;
a new PIECE_K changes them by design). Includes Qwen3-0.6B's fused decode shapes (qkv, gate_up).
Left out: warp-specialised variants, fp16, bias.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from onpolicy import determinism, kernels

mm = importlib.import_module("onpolicy.kernels.matmul")
KN = [(1024, 3072), (2048, 6144), (4096, 12288), (3072, 1024), (6144, 2048), (12288, 4096), (1024, 151936)]


def cold(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def graph_time(make_fn, copies: int, calls: int = 4) -> float:
    """ms per call, from a CUDA graph of `calls` rounds over `copies` weight copies (GPU time only)."""
    fns = [make_fn(i) for i in range(copies)]
    for f in fns:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / (5 * calls * copies)


def host_time(fn, n: int = 300) -> float:
    """Host ms per eager call (no sync inside the loop; the GPU queue absorbs the kernels)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / n


def part_host(out: list) -> None:
    M, K, N = 1, 2048, 6144
    x = torch.randn(M, K, device="cuda").bfloat16()
    w = (torch.randn(N, K, device="cuda") / K**0.5).bfloat16()
    cfg = mm.tile_config(torch.bfloat16, K, N)
    TD = mm.TensorDescriptor
    c = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    steps = {
        "F.linear": lambda: F.linear(x, w),
        "kernels.linear": lambda: kernels.linear(x, w),
        "_linear_tma": lambda: mm._linear_tma(x, w, None, cfg),
        "_mm_triton(pointer)": lambda: mm._mm_triton(x, w.t()),
        "_check_linear": lambda: mm._check_linear(x, w, None),
        "tile_config": lambda: mm.tile_config(torch.bfloat16, K, N),
        "torch.empty": lambda: torch.empty((M, N), device=x.device, dtype=x.dtype),
        "TensorDescriptor x2": lambda: (TD(x, [M, K], [K, 1], [128, 64]), TD(w, [N, K], [K, 1], [128, 64])),
        "reshape+contiguous": lambda: x.reshape(-1, K).contiguous(),
        "_tma_ok": lambda: mm._tma_ok(x, w),
        "empty kernel launch": lambda: _noop[(1,)](c),
    }
    for k, f in steps.items():
        rec = dict(path=k, host_us=host_time(f, 500) * 1e3)
        out.append(rec)
        print(f"host {k:<24} {rec['host_us']:8.1f} us", flush=True)


def part_profile(out: list) -> None:
    """cProfile of eager `kernels.linear` calls (M=1: host-bound), top functions by own time."""
    import cProfile
    import pstats

    for M, K, N in [(1, 2048, 6144), (1, 3072, 1024)]:
        x = torch.randn(M, K, device="cuda").bfloat16()
        w = (torch.randn(N, K, device="cuda") / K**0.5).bfloat16()
        kernels.linear(x, w)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            kernels.linear(x, w)
        prof.disable()
        torch.cuda.synchronize()
        print(f"profile M={M} K={K} N={N}: 300 calls")
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


@triton.jit
def _noop(p):
    pass


def candidates(K: int) -> list[dict]:
    out = []

    def add(bm, bn, w, stages, pk, bk=64, occ=1):
        out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=stages,
                        PIECE_K=pk, OCC=occ))

    add(128, 256, 8, 3, K)
    add(128, 256, 8, 4, K)
    for pk in sorted({K, 2048 if K > 2048 else K, 1024}):
        if K // pk <= 12:
            add(128, 128, 8, 4, pk)
            add(128, 128, 8, 3, pk, bk=128)
    add(128, 128, 8, 3, K, occ=2)
    add(64, 128, 4, 4, min(K, 1024))
    return out


def name(c) -> str:
    return (f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}w{c['num_warps']}s{c['num_stages']}p{c['PIECE_K']}"
            + (f"o{c['OCC']}" if c.get("OCC", 1) > 1 else ""))


def part_sweep(out: list, ms: list[int]) -> None:
    for K, N in KN:
        w = (torch.randn(N, K, device="cuda") / K**0.5).bfloat16()
        copies = max(1, int(2e8 // (N * K * 2)))
        wcs = [w] + [w.clone() for _ in range(copies - 1)]
        big = torch.randn(4096 if N < 100000 else 1024, K, device="cuda").bfloat16()
        ref = F.linear(big, w).float()
        for cfg in candidates(K) + ["cublas"]:
            f = (lambda x, wi: F.linear(x, wi)) if cfg == "cublas" else (
                lambda x, wi, cfg=cfg: mm._linear_tma(x, wi, None, cfg))
            try:
                full = f(big, w)
                ok = torch.allclose(full.float(), ref, atol=2e-2, rtol=2e-2)
                inv = all(torch.equal(f(big[i:i + m], w), full[i:i + m]) for m in (1, 3, 64, 300) for i in (0, 17))
            except Exception as exc:  # a config that does not compile or fit is skipped, not fatal
                print(f"K={K} N={N} {cfg} FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            for M in ms:
                if M > big.shape[0]:
                    continue
                x = big[:M]
                rec = dict(K=K, N=N, M=M, cfg=cfg, ok=ok, inv=inv, ours_ms=cold(lambda: f(x, w)),
                           graph_ms=graph_time(lambda i: (lambda: f(x, wcs[i])), copies))
                out.append(rec)
        summarize([r for r in out if r.get("K") == K and r.get("N") == N and "cfg" in r])
        dump(out, OUT_DIR[0])
        w = wcs = big = ref = None  # free this shape's GPU buffers before the next
        torch.cuda.empty_cache()


def _wide(pk: int, stages: int = 4) -> dict:
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=stages, PIECE_K=pk)


def _m64(pk: int) -> dict:
    """A 64-row tile (one warpgroup): half the padded tensor-core work of a 128-row tile at decode sizes."""
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4, PIECE_K=pk)


# Part C (--part probe): per shape, the current tile_config and candidates, each schedule forced, GPU time only.
# Qwen3-0.6B's fused decode shapes: qkv 1024x4096, gate_up 1024x6144, o 2048x1024, down 3072x1024.
PROBE = {(1024, 4096): [_wide(256), _wide(512), _m64(1024), _m64(256)],
         (1024, 6144): [_wide(256), _wide(512), _m64(1024), _m64(256)],
         (1024, 3072): [_wide(256), _wide(512)], (2048, 6144): [_wide(512), _wide(1024)],
         (3072, 1024): [_wide(1024), _wide(256), _m64(512)], (2048, 1024): [_wide(1024), _wide(256), _m64(512)],
         (6144, 2048): [_wide(512), _wide(2048)],
         (12288, 4096): [_wide(1024), _wide(2048)], (1024, 151936): [_wide(256), _wide(512)],
         (2048, 151936): [_wide(512), _wide(1024)]}


def part_probe(out: list, ms: list[int], kn: str) -> None:
    """Graph-time ratio vs cuBLAS of each (config, schedule); schedules: whole-K, split (+/- PDL piece sum).
    `kn`: comma-separated KxN shapes of PROBE to run (empty: all)."""
    for (K, N), extra in PROBE.items():
        if kn and f"{K}x{N}" not in kn.split(","):
            continue
        w = (torch.randn(N, K, device="cuda") / K**0.5).bfloat16()
        copies = max(1, int(2e8 // (N * K * 2)))
        wcs = [w] + [w.clone() for _ in range(copies - 1)]
        big = torch.randn(4096 if N < 100000 else 1024, K, device="cuda").bfloat16()
        ref = F.linear(big, w).float()
        base = {M: graph_time(lambda i, M=M: (lambda: F.linear(big[:M], wcs[i])), copies) for M in ms}
        cur = dict(mm.tile_config(torch.bfloat16, K, N))
        cur_whole = mm._linear_tma(big, w, None, cur, split=False)
        for cfg in [cur] + extra:
            pieces = -(-K // cfg["PIECE_K"])
            scheds = [("whole", False, True)] + ([("split", True, True), ("split_nopdl", True, False)]
                                                 if pieces > 1 else [])
            for sname, split, pdl in scheds:
                if sname == "split_nopdl" and cfg is not cur:
                    continue
                c2 = dict(cfg, PDL=pdl)
                f = (lambda x, wi, c2=c2, split=split: mm._linear_tma(x, wi, None, c2, split=split))
                try:
                    whole = mm._linear_tma(big, w, None, c2, split=False)
                    ok = torch.allclose(whole.float(), ref, atol=2e-2, rtol=2e-2)
                    inv = all(torch.equal(f(big[i:i + m], w), whole[i:i + m]) for m in (1, 3, 200) for i in (0, 17))
                    same = torch.equal(whole, cur_whole)  # the current config's bits (a tile change alone)
                except Exception as exc:  # a config that does not compile or fit is skipped, not fatal
                    print(f"K={K} N={N} {name(cfg)} {sname} FAILED {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                label = name(cfg) + ("*" if cfg is cur else "")
                line = f"K={K:5d} N={N:6d} {label:<26} {sname:<11} ok={ok:d} inv={inv:d} same={same:d}"
                for M in ms:
                    if M > big.shape[0] or (split and pieces * M * N * 4 > 2**30):
                        continue
                    t = graph_time(lambda i, M=M: (lambda: f(big[:M], wcs[i])), copies)
                    out.append(dict(K=K, N=N, M=M, cfg=cfg, sched=sname, ok=ok, inv=inv, same=same, graph_ms=t,
                                    cublas_ms=base[M]))
                    line += f" {M}:{base[M] / t:.2f}"
                print(line, flush=True)
        print(f"K={K:5d} N={N:6d} cublas us " + " ".join(f"{M}:{base[M] * 1e3:.1f}" for M in ms), flush=True)
        dump(out, OUT_DIR[0])
        w = wcs = big = ref = cur_whole = None  # free this shape's GPU buffers before the next
        torch.cuda.empty_cache()


def summarize(recs: list) -> None:
    for M in sorted({r["M"] for r in recs}):
        rows = [r for r in recs if r["M"] == M]
        base = next(r for r in rows if r["cfg"] == "cublas")
        good = [r for r in rows if r["cfg"] != "cublas" and r["ok"] and r["inv"]]
        if not good:
            continue
        line = f"K={base['K']} N={base['N']} M={M}: cublas {base['ours_ms']:.4f}"
        top = sorted(good, key=lambda r: r["ours_ms"])[:3]
        line += " cold " + " ".join(f"{name(r['cfg'])}:{base['ours_ms'] / r['ours_ms']:.2f}" for r in top)
        if "graph_ms" in base:
            good = [r for r in good if "graph_ms" in r]
            top = sorted(good, key=lambda r: r["graph_ms"])[:3]
            line += f" | graph cublas {base['graph_ms']:.4f} " + " ".join(
                f"{name(r['cfg'])}:{base['graph_ms'] / r['graph_ms']:.2f}" for r in top)
        print(line, flush=True)


OUT_DIR = ["sweep_out"]


def dump(out: list, folder: str) -> None:
    with open(os.path.join(folder, "sweep.json"), "w") as f:
        json.dump(out, f, indent=0, default=str)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="host,sweep")
    p.add_argument("--ms", default="1,16,64,256,1024,4096")
    p.add_argument("--out", default="sweep_out")
    p.add_argument("--kn", default="", help="--part probe: comma-separated KxN shapes (default: all)")
    args = p.parse_args()
    determinism.enable(seed=0)
    os.makedirs(args.out, exist_ok=True)
    OUT_DIR[0] = args.out
    out: list = []
    with torch.inference_mode():
        if "host" in args.part:
            part_host(out)
        if "profile" in args.part:
            part_profile(out)
        if "probe" in args.part:
            part_probe(out, [int(m) for m in args.ms.split(",")], args.kn)
        if "sweep" in args.part:
            part_sweep(out, [int(m) for m in args.ms.split(",")])
    dump(out, args.out)


if __name__ == "__main__":
    main()
