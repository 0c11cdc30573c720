"""Benchmark the batch-invariant MoE layer (Qwen3-30B-A3B shape) against plain torch MoE layers, in one run.

One sparse MLP forward (router GEMM, softmax + top-k, expert gate/up GEMM, SiLU-mul, down GEMM, weighted combine)
at decode sizes (1-256 tokens) and training sizes (4k-32k tokens): ours (`onpolicy.model.moe.MoEMLP`: the
grouped Triton GEMM, fixed tiles, no split-K) vs
  loop    transformers' maths: F.linear router, torch softmax/topk, one cuBLAS F.linear pair per hit expert,
          index_add_ (host syncs; not batch invariant)
  grouped torch._grouped_mm over expert-sorted tokens (when this torch has it; not batch invariant)
(baselines run with torch's deterministic algorithms off, as a plain torch user runs them)
Per size: median ms (`do_bench`, eager), the ratio best-baseline-ms / ours-ms (>1 = ours faster), achieved
TFLOP/s of the expert and router GEMMs (2 * tokens * (k * 3 * H * I + H * E)), the fraction of HBM bandwidth the
expert-weight reads reach at decode (distinct experts' bytes / time / `scripts.common.HBM_BYTES_PER_S`), and peak memory of one call.
Also checks a token's output alone vs inside the batch (ours must be torch.equal). Writes a table and
`--out`/moe.json.

    python -m scripts.bench_moe              # CUDA, bf16, 30B-A3B layer shape
    python -m scripts.bench_moe --quick      # tiny shape, CPU fp32, seconds
    python -m scripts.bench_moe --sweep-tiles --tokens 256,8192,32768   # candidate bf16 tiles
Left out: backward, multi-GPU / expert parallel, fp8.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from onpolicy import determinism
from onpolicy.model import ModelConfig
from onpolicy.model.moe import MoEMLP
from scripts.common import HBM_BYTES_PER_S, bench, default_device, device_name


def layer_config(quick: bool, dtype: str) -> ModelConfig:
    h, i, e, k = (128, 64, 16, 4) if quick else (2048, 768, 128, 8)
    return ModelConfig(architecture="qwen3_moe", hidden_size=h, intermediate_size=3 * i, num_hidden_layers=1,
                       num_attention_heads=16, num_key_value_heads=4, head_dim=128, dtype=dtype, num_experts=e,
                       num_experts_per_tok=k, moe_intermediate_size=i, norm_topk_prob=True)


def loop_moe(layer: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3-MoE block maths with cuBLAS / MKL GEMMs."""
    probs = torch.softmax(F.linear(x, layer.gate.weight), dim=-1, dtype=torch.float32)
    w, ids = torch.topk(probs, layer.top_k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
    out = torch.zeros_like(x)
    i = layer.experts.intermediate_size
    for e in ids.unique().tolist():
        tok, rank = (ids == e).nonzero(as_tuple=True)
        gate, up = F.linear(x[tok], layer.experts.gate_up_proj[e]).split([i, i], -1)
        y = F.linear(F.silu(gate) * up, layer.experts.down_proj[e]) * w[tok, rank, None]
        out.index_add_(0, tok, y)
    return out


def grouped_moe(layer: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm over tokens sorted by expert (offsets of each expert's rows)."""
    probs = torch.softmax(F.linear(x, layer.gate.weight), dim=-1, dtype=torch.float32)
    w, ids = torch.topk(probs, layer.top_k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
    flat = ids.flatten()
    order = flat.argsort()
    offs = torch.cumsum(torch.bincount(flat, minlength=layer.num_experts), 0).to(torch.int32)
    xs = x[order // layer.top_k]
    h = torch._grouped_mm(xs, layer.experts.gate_up_proj.transpose(1, 2), offs=offs)
    i = layer.experts.intermediate_size
    y = torch._grouped_mm(F.silu(h[:, :i]) * h[:, i:], layer.experts.down_proj.transpose(1, 2), offs=offs)
    y = y * w.flatten()[order, None]
    return torch.zeros_like(x).index_add_(0, order // layer.top_k, y)


def plain(fn):
    """fn under torch's default (non-deterministic) algorithms: index_add_ with atomics, as users run it."""

    def run():
        torch.use_deterministic_algorithms(False)
        try:
            return fn()
        finally:
            torch.use_deterministic_algorithms(True)

    return run


def _peak_mib(fn, dev: str) -> float | None:
    if dev != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_size(layer: MoEMLP, tokens: int, dev: str, reps: int) -> dict:
    c = layer.experts.gate_up_proj
    e, i2, h = c.shape
    k = layer.top_k
    x = torch.randn(tokens, h, device=dev).to(c.dtype)
    fns = {"ours": lambda: layer(x), "loop": plain(lambda: loop_moe(layer, x))}
    if dev == "cuda" and hasattr(torch, "_grouped_mm"):
        fns["grouped"] = plain(lambda: grouped_moe(layer, x))
    row = {"tokens": tokens}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                row[f"{name}_ms"] = bench(fn, dev, reps)
                row[f"{name}_peak_mib"] = _peak_mib(fn, dev)
        except Exception as err:  # a baseline this torch / GPU cannot run is reported, not fatal
            row[f"{name}_ms"], row[f"{name}_error"] = None, f"{type(err).__name__}: {str(err)[:120]}"
    flops = 2 * tokens * (k * 3 * h * (i2 // 2) + h * e)
    row["ours_tflops"] = flops / row["ours_ms"] / 1e9
    best = min(v for key, v in row.items() if key.endswith("_ms") and key != "ours_ms" and v is not None)
    row["ratio_vs_best_baseline"] = best / row["ours_ms"]
    with torch.no_grad():
        ids = torch.topk(F.linear(x, layer.gate.weight), k, dim=-1).indices  # the experts read (ties aside)
        bytes_read = ids.unique().numel() * 3 * h * (i2 // 2) * c.element_size()
        row["hbm_frac"] = bytes_read / (row["ours_ms"] * 1e-3) / HBM_BYTES_PER_S if dev == "cuda" else None
        row["invariant"] = bool(torch.equal(layer(x)[:1], layer(x[:1])))
    return row


TILE_CANDIDATES = [  # bf16 grouped-GEMM tiles for --sweep-tiles (the first is moe_tile_config's)
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
]


def sweep_tiles(layer: MoEMLP, sizes: list[int], dev: str) -> list[dict]:
    """ours_ms per candidate tile config (swapped in for the run: the layout's block follows BLOCK_M)."""
    from onpolicy.kernels import moe_gemm

    default, out = moe_gemm.moe_tile_config, []
    try:
        for cfg in TILE_CANDIDATES:
            moe_gemm.moe_tile_config = lambda dtype, cfg=cfg: dict(cfg) if dtype != torch.float32 else default(dtype)
            for t in sizes:
                x = torch.randn(t, layer.gate.weight.shape[1], device=dev).to(layer.gate.weight.dtype)
                with torch.no_grad():
                    ms = bench(lambda: layer(x), dev, 3)
                out.append({"tiles": cfg, "tokens": t, "ours_ms": ms})
                print(f"{t:>7} {ms:9.3f} ms  {cfg}")
    finally:
        moe_gemm.moe_tile_config = default
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shape on the CPU in fp32 (seconds)")
    p.add_argument("--tokens", default=None, help="comma-separated token counts (default: decode + training sizes)")
    p.add_argument("--reps", type=int, default=5, help="CPU timing repetitions")
    p.add_argument("--out", default="bench_out", help="directory for moe.json")
    p.add_argument("--sweep-tiles", action="store_true", help="time ours under candidate bf16 tile configs only")
    args = p.parse_args(argv)
    determinism.enable(seed=0)
    dev = default_device(args.quick)
    sizes = [int(t) for t in args.tokens.split(",")] if args.tokens else (
        [1, 16, 256] if args.quick else [1, 8, 32, 64, 128, 256, 4096, 8192, 16384, 32768])
    layer = MoEMLP(layer_config(args.quick, "float32" if dev == "cpu" else "bfloat16")).to(dev)
    with torch.no_grad():
        for prm in layer.parameters():
            prm.normal_(0.0, 0.02)
    if args.sweep_tiles:
        return sweep_tiles(layer, sizes, dev)
    rows = []
    print(f"{'tokens':>7} {'ours ms':>9} {'loop ms':>9} {'grouped':>9} {'ratio':>6} {'TFLOP/s':>8} {'HBM':>5} "
          f"{'peak MiB':>9} inv")
    for t in sizes:
        r = run_size(layer, t, dev, args.reps)
        rows.append(r)
        fmt = lambda v, f="{:9.3f}": (f.format(v) if v is not None else f"{'-':>9}")  # noqa: E731
        print(f"{t:>7} {fmt(r['ours_ms'])} {fmt(r.get('loop_ms'))} {fmt(r.get('grouped_ms'))} "
              f"{r['ratio_vs_best_baseline']:6.2f} {r['ours_tflops']:8.1f} "
              f"{'-' if r['hbm_frac'] is None else format(r['hbm_frac'], '5.2f'):>5} "
              f"{fmt(r.get('ours_peak_mib'), '{:9.1f}')} {r['invariant']}")
    os.makedirs(args.out, exist_ok=True)
    meta = {"device": device_name(dev), "torch": torch.__version__,
            "shape": {k: getattr(layer_config(args.quick, "float32"), k) for k in
                      ("hidden_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok")}}
    with open(os.path.join(args.out, "moe.json"), "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
