"""bench_reduce: the fixed-order gradient sum (`Dist.tree_sum_`, recursive doubling) against the backend's
all_reduce on flat fp32 gradients, one process per device, and whether each gives the same bits run after run.

    python -m scripts.bench_reduce --device cuda --world 2       # NCCL, one process per GPU
    python -m scripts.bench_reduce --device cpu --world 2        # gloo

Sizes default to 64 MiB, 1 GiB and the fp32 gradient of Qwen3-0.6B (2.4 GiB) and 1.7B (6.4 GiB). Each
figure is the minimum over --repeats timed calls after one warm-up (CUDA: synchronised wall time), with the
bus bandwidth a ring all_reduce would need (2(W-1)/W x bytes / time). Prints a table with tree / all_reduce
ratios; writes bench_reduce.json to --out. Left out: overlap with a backward, multi-node.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as td
import torch.multiprocessing as mp

from onpolicy.trainer.distributed import Dist
from scripts.common import free_port

GIB = float(1 << 30)
SIZES = {"64MiB": 16 << 20, "1GiB": 1 << 28, "0.6B": 596_049_920, "1.7B": 1_720_574_976}  # fp32 elements


def _timed(fn, flat: torch.Tensor, src: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats + 1):
        flat.copy_(src)
        if flat.is_cuda:
            torch.cuda.synchronize()
        td.barrier()
        t0 = time.perf_counter()
        fn(flat)
        if flat.is_cuda:
            torch.cuda.synchronize()
        if i:  # the first call warms up (NCCL communicators, buffers)
            best = min(best, time.perf_counter() - t0)
    return best


def _worker(rank: int, args, port: int, out: dict) -> None:
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    td.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.world,
                          device_id=dev if cuda else None)
    dist = Dist(rank, args.world)
    try:
        for name in args.sizes:
            src = torch.randn(SIZES[name], generator=torch.Generator().manual_seed(rank), dtype=torch.float32).to(dev)
            flat = torch.empty_like(src)
            row = {}
            for label, fn in (("all_reduce", td.all_reduce), ("tree", dist.tree_sum_)):
                row[label] = _timed(fn, flat, src, args.repeats)
                first = flat.clone()
                flat.copy_(src)
                fn(flat)
                row[f"{label}_same_bits"] = bool(torch.equal(first, flat))
                del first
            if rank == 0:
                out[name] = row
            del src, flat
            if cuda:
                torch.cuda.empty_cache()
    finally:
        td.destroy_process_group()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="outputs/bench_reduce")
    args = p.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.world:
        p.error(f"--world: {args.world} needs that many GPUs; {torch.cuda.device_count()} here")
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(args, free_port(), out), nprocs=args.world, join=True)
    w = args.world
    print(f"{'gradient':>8} {'GiB':>6} {'all_reduce ms':>14} {'busbw GB/s':>11} {'tree ms':>9} {'tree/ar':>8}  same bits")
    for name in args.sizes:
        r, gib = out[name], SIZES[name] * 4 / GIB
        busbw = 2 * (w - 1) / w * SIZES[name] * 4 / r["all_reduce"] / 1e9
        print(f"{name:>8} {gib:6.2f} {r['all_reduce'] * 1e3:14.2f} {busbw:11.1f} {r['tree'] * 1e3:9.2f} "
              f"{r['tree'] / r['all_reduce']:8.2f}  ar {r['all_reduce_same_bits']}, tree {r['tree_same_bits']}")
    result = {"device": args.device, "world": w, "results": dict(out)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_reduce.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
