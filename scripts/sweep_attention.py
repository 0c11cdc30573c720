"""Tile sweep of the Triton training attention, forward and backward, against SDPA's fastest backend (dev tool).

    python -m scripts.sweep_attention [--lengths 1024 4096 16384] [--tokens 16384] [--out bench_out]

Causal packed training batches of Qwen3's heads (--head-dim, bf16; B = --tokens / S sequences of each length S).
Each candidate forward tile (query rows, keys per tile, warps, pipeline stages) and backward tile (query rows,
key rows, warps, stages) is timed with `do_bench` beside SDPA's fastest backend on the same q/k/v. Checks per
candidate: the forward's output and logsumexp are `torch.equal` to the shipped tile's when the keys per tile
are the same (a row's arithmetic must not depend on its tile: that is what lets training, prefill and decode
agree); a different key tile changes every caller's bits (reported as "new bits", then only compared within
tolerance). The backward's gradients must be close to the shipped tile's and equal run to run. Candidates that
do not compile (shared memory, registers) are listed with their error. Writes sweep_attention.json and
sweep_attention.png (ratio vs SDPA per length: the shipped tile and the best candidate) to --out; prints the best
candidate per pass. `--quick`: tiny fp32 shapes, two candidates per pass (a smoke run; on the CPU it needs
TRITON_INTERPRET=1).
Left out: windows, head_dim 256 (its own tile table), the paged decode path (bench_attention.py times it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time

import torch

from onpolicy.kernels import attention_bwd_triton as bwd_kernels
from onpolicy.kernels import attention_triton as fwd_kernels
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, training_metadata
from scripts.bench_attention import HEADS, _backends, _fastest, _grad_fn, _sdpa
from scripts.common import bench, device_name

FWD_CANDIDATES = [(bq, bk, w, st) for bq in (64, 128) for bk in (64, 128) for w in (4, 8) for st in (2, 3, 4)]
BWD_CANDIDATES = [(bm, bn, w, st) for bm in (32, 64, 128) for bn in (64, 128) for w in (4, 8) for st in (1, 2)]
QUICK_FWD = [(16, 64, 8, 2), (32, 32, 4, 2)]
QUICK_BWD = [(32, 64, 8, 1), (16, 32, 4, 1)]


def shipped_forward(dtype) -> tuple:
    rows, warps = fwd_kernels.FWD_TILE[dtype]
    return rows, fwd_kernels.BLOCK_K, warps, fwd_kernels.FWD_STAGES


@contextlib.contextmanager
def forward_tile(dtype, tile):
    """Run the forward with `tile` = (query rows, keys per tile, warps, stages) for `dtype`, then restore."""
    saved = fwd_kernels.FWD_TILE[dtype], fwd_kernels.BLOCK_K, fwd_kernels.FWD_STAGES
    rows, keys, warps, stages = tile
    fwd_kernels.FWD_TILE[dtype], fwd_kernels.BLOCK_K, fwd_kernels.FWD_STAGES = (rows, warps), keys, stages
    try:
        yield
    finally:
        fwd_kernels.FWD_TILE[dtype], fwd_kernels.BLOCK_K, fwd_kernels.FWD_STAGES = saved


@contextlib.contextmanager
def backward_tile(dtype, tile):
    """Run the backward with `tile` = (query rows, key rows, warps, stages) for `dtype`, then restore."""
    saved = bwd_kernels.BWD_TILE[dtype]
    bwd_kernels.BWD_TILE[dtype] = tile
    try:
        yield
    finally:
        bwd_kernels.BWD_TILE[dtype] = saved


class Case:
    """One packed causal batch: q/k/v [B*S, H, D], its metadata, a cotangent and SDPA's fastest times."""

    def __init__(self, s: int, tokens: int, heads: tuple, dtype, dev: str, reps: int):
        hq, hkv, d = heads
        self.s, self.b, self.dev, self.reps = s, max(tokens // s, 1), dev, reps
        g = torch.Generator(device=dev).manual_seed(s)
        mk = lambda h: torch.randn(self.b * s, h, d, device=dev, dtype=dtype, generator=g)  # noqa: E731
        self.q, self.k, self.v, self.do = mk(hq), mk(hkv), mk(hkv), mk(hq)
        self.cu = torch.arange(0, self.b * s + 1, s, device=dev, dtype=torch.int32)
        self.meta = (self.cu, *training_metadata(self.cu), TRAINING_BLOCK_SIZE)
        self.scale = d ** -0.5
        self.flops = 4 * self.b * hq * d * s * (s + 1) // 2  # two causal matmuls
        self.sdpa_fwd, self.sdpa_bwd = self._sdpa_times()

    def forward(self):
        return fwd_kernels.attention_forward_triton(self.q, self.k, self.v, *self.meta, self.scale, True,
                                                    max_keys=self.s)

    def backward(self, out, lse):
        return bwd_kernels.attention_backward_triton(self.q, self.k, self.v, out, lse, self.do, self.cu, self.scale)

    def _sdpa_times(self) -> tuple:
        dense = lambda t: t.view(self.b, self.s, *t.shape[1:])  # noqa: E731
        fns = {n: (lambda be: lambda q, k, v: _sdpa(be, dense(q), dense(k), dense(v), True))(be)
               for n, be in _backends(self.dev).items()}
        with torch.no_grad():
            fwd = _fastest({n: (lambda f: lambda: f(self.q, self.k, self.v))(f) for n, f in fns.items()},
                           self.dev, self.reps)
        leaves = [t.clone().requires_grad_() for t in (self.q, self.k, self.v)]
        grads = {}
        for n, f in fns.items():
            with contextlib.suppress(RuntimeError):
                grads[n] = _grad_fn(f, leaves)
        return fwd, _fastest(grads, self.dev, self.reps)


def _row(case: Case, pass_name: str, tile, ms: float, base: tuple, **checks) -> dict:
    work = case.flops * (1.0 if pass_name == "forward" else 2.5)
    return dict(pass_=pass_name, length=case.s, batch=case.b, tile=list(tile), ms=ms, tflops=work / ms * 1e-9,
                sdpa=base[0], sdpa_ms=base[1], vs_sdpa=base[1] / ms, **checks)


def sweep_forward(case: Case, dtype, candidates) -> list[dict]:
    ref_out, ref_lse = case.forward()
    keys = fwd_kernels.BLOCK_K
    rows = []
    for tile in candidates:
        try:
            with forward_tile(dtype, tile):
                out, lse = case.forward()
                ms = bench(case.forward, case.dev, case.reps)
        except Exception as e:  # a tile that does not compile here: listed, not fatal
            rows.append(dict(pass_="forward", length=case.s, tile=list(tile), error=f"{type(e).__name__}: {e}"[:200]))
            continue
        same = tile[1] == keys
        bits = torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
        close = torch.allclose(out.float(), ref_out.float(), atol=2e-2, rtol=2e-2)
        rows.append(_row(case, "forward", tile, ms, case.sdpa_fwd, same_keys=same, same_bits=bits,
                         ok=bits if same else close))
    return rows


def sweep_backward(case: Case, dtype, candidates) -> list[dict]:
    out, lse = case.forward()
    ref = case.backward(out, lse)
    rows = []
    for tile in candidates:
        try:
            with backward_tile(dtype, tile):
                grads, again = case.backward(out, lse), case.backward(out, lse)
                ms = bench(lambda: case.backward(out, lse), case.dev, case.reps)
        except Exception as e:
            rows.append(dict(pass_="backward", length=case.s, tile=list(tile), error=f"{type(e).__name__}: {e}"[:200]))
            continue
        repeat = all(torch.equal(a, b) for a, b in zip(grads, again))
        err = max(float((a.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30))
                  for a, r in zip(grads, ref))
        rows.append(_row(case, "backward", tile, ms, case.sdpa_bwd, run_to_run=repeat, rel_err=err,
                         ok=repeat and err < 2e-2))
    return rows


def best(rows: list[dict], pass_name: str, same_keys_only: bool) -> tuple | None:
    """The tile with the highest geometric-mean ratio vs SDPA over the lengths where it ran and passed."""
    by_tile: dict[tuple, list[float]] = {}
    for r in rows:
        if r["pass_"] == pass_name and r.get("ok") and (not same_keys_only or r.get("same_keys", True)):
            by_tile.setdefault(tuple(r["tile"]), []).append(r["vs_sdpa"])
    lengths = len({r["length"] for r in rows if r["pass_"] == pass_name})
    scored = {t: math.exp(sum(map(math.log, v)) / len(v)) for t, v in by_tile.items() if len(v) == lengths}
    return max(scored.items(), key=lambda kv: kv[1]) if scored else None


def summary(rows: list[dict], shipped: dict) -> list[str]:
    lines = []
    for pass_name in ("forward", "backward"):
        ship = tuple(shipped[pass_name])
        ratios = [r["vs_sdpa"] for r in rows if r["pass_"] == pass_name and tuple(r["tile"]) == ship and "ms" in r]
        if ratios:
            lines.append(f"{pass_name}: shipped tile {list(ship)}: geomean {_geomean(ratios):.2f}x SDPA")
        for same in (True, False) if pass_name == "forward" else (False,):
            top = best(rows, pass_name, same)
            label = "same bits" if same else ("any key tile (new bits)" if pass_name == "forward" else "close, run-to-run equal")
            if top:
                lines.append(f"{pass_name}: best, {label}: {list(top[0])}: geomean {top[1]:.2f}x SDPA")
    return lines


def _geomean(values) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def plot(rows: list[dict], shipped: dict, path: str, heading: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, pass_name in zip(axes, ("forward", "backward")):
        top = best(rows, pass_name, pass_name == "forward")
        for label, tile in (("shipped", tuple(shipped[pass_name])), ("best", top[0] if top else None)):
            pts = sorted((r["length"], r["vs_sdpa"]) for r in rows
                         if r["pass_"] == pass_name and tile and tuple(r["tile"]) == tile and "ms" in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{label} {list(tile)}")
        ax.axhline(0.8, color="gray", lw=0.8, ls="--", label="target 0.8x")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("speed vs SDPA's fastest (x)")
        ax.set_title(pass_name)
        ax.legend()
    fig.suptitle(heading)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--tokens", type=int, default=16384, help="packed tokens per batch (B = tokens / length)")
    p.add_argument("--head-dim", type=int, default=128, choices=(64, 96, 128))
    p.add_argument("--passes", nargs="+", default=["forward", "backward"], choices=("forward", "backward"))
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true", help="tiny fp32 shapes, two candidates per pass (CPU)")
    args = p.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not (args.quick and os.environ.get("TRITON_INTERPRET") == "1"):
        p.error("needs CUDA (or --quick with TRITON_INTERPRET=1 on the CPU)")
    dtype = torch.float32 if args.quick else torch.bfloat16
    heads = (4, 2, 64) if args.quick else (*HEADS[args.head_dim], args.head_dim)
    lengths, tokens = ([32], 64) if args.quick else (args.lengths, args.tokens)
    fwd_c, bwd_c = (QUICK_FWD, QUICK_BWD) if args.quick else (FWD_CANDIDATES, BWD_CANDIDATES)
    shipped = {"forward": shipped_forward(dtype), "backward": bwd_kernels.BWD_TILE[dtype]}
    fwd_c, bwd_c = [shipped["forward"], *fwd_c], [shipped["backward"], *bwd_c]
    rows, t0 = [], time.time()
    for s in lengths:
        case = Case(s, tokens, heads, dtype, dev, reps=1 if args.quick else 3)
        if "forward" in args.passes:
            rows += sweep_forward(case, dtype, list(dict.fromkeys(fwd_c)))
        if "backward" in args.passes:
            rows += sweep_backward(case, dtype, list(dict.fromkeys(bwd_c)))
        print(f"S={s}: {len(rows)} rows, {time.time() - t0:.0f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(device=device_name(dev), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                heads=list(heads), dtype=str(dtype), tokens=tokens, shipped={k: list(v) for k, v in shipped.items()})
    with open(os.path.join(args.out, "sweep_attention.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    for line in [f"{r['pass_']} S={r['length']} {r['tile']}: {r['error']}" for r in rows if "error" in r]:
        print("did not run:", line)
    heading = f"attention tile sweep, Hq/Hkv/D={heads}, {dtype}, {meta['device']}, {meta['date']}"
    plot(rows, shipped, os.path.join(args.out, "sweep_attention.png"), heading)
    print("\n".join(summary(rows, shipped)))
    return rows


if __name__ == "__main__":
    main()
