"""bench_scale: seconds per RL step, peak memory per device, and the cost of the fixed-order gradient reduction,
for `accelerate launch` of recipes/grpo.py at world size N with DDP and FSDP2.

    python scripts/bench_scale.py                                        # CPU (gloo): world sizes 1 and 2
    python scripts/bench_scale.py --device cuda --world-sizes 1 --size medium   # one GPU (NCCL)

Variants: `ddp/tree` (replicated masters, the fixed-order chunk tree: the default), `ddp/all_reduce` (the
backend's all_reduce instead, `trainer.grad_reduction`; only for world size > 1, where it differs), `fsdp2`
(fully_shard, FSDP's reduce-scatter; the recipe pins NCCL). Each is a fresh launch of the tiny embedded task
(configs/tiny-cpu.yaml, `--size` picks the model) for `--steps` steps without SFT warm start, bf16 weights with
fp32 masters; step 1 (compile, allocator warm-up) is dropped and the median of the rest reported. Memory: on
CUDA rank 0's peak allocated in the sample and train phases (its metrics); on CPU the largest peak RSS of any
process of the launch (getrusage of the launcher's reaped children). Every step must log onpolicy/kl == 0.0.
Writes bench_scale.json to --out. Left out: the collective's time alone (docs/distributed.md measures gloo's),
multi-node, models that need a checkpoint (the tiny family only).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"ddp/tree": ("ddp", "tree"), "ddp/all_reduce": ("ddp", "all_reduce"), "fsdp2": ("fsdp2", "tree")}
ACCELERATE_CONFIGS = {("ddp", "cpu"): "cpu_ddp.yaml", ("ddp", "cuda"): "ddp.yaml",
                      ("fsdp2", "cpu"): "cpu_fsdp2.yaml", ("fsdp2", "cuda"): "fsdp2.yaml"}
SIZES = {"default": None,  # the config's tiny model (128 hidden, 2 layers)
         "medium": "{hidden_size: 512, intermediate_size: 1536, num_hidden_layers: 8, num_attention_heads: 8, "
                   "num_key_value_heads: 2, head_dim: 64, max_position_embeddings: 64}"}
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(args, variant: str, world: int, out: str) -> list[str]:
    layout, reduction = VARIANTS[variant]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(REPO, "configs/accelerate", ACCELERATE_CONFIGS[layout, args.device]),
           "--num_processes", str(world), "--main_process_port", str(_free_port()),
           os.path.join(REPO, "recipes/grpo.py"), "--config", os.path.join(REPO, "configs/tiny-cpu.yaml"),
           "--model.device", args.device, "--model.dtype", "bfloat16", "--trainer.steps", str(args.steps),
           "--trainer.sft_warmup_steps", "0", "--trainer.prompts_per_step", str(args.prompts),
           "--trainer.grad_reduction", reduction, "--logging.plot", "false", "--logging.output_dir", out]
    if SIZES[args.size]:
        cmd += ["--model.tiny", SIZES[args.size]]
    return cmd


def run_variant(args, variant: str, world: int) -> dict:
    """One launch; -> seconds per step (median after step 1), phase times, peak memory, max |kl|."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        res = subprocess.run([sys.executable, "-c", _PEAK_RSS, *launch_cmd(args, variant, world, out)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{variant} at world size {world} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f][1:]
    peak_rss = int(res.stdout.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]) / 2**20
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    gpu = "memory/train_peak_gib" in rows[0]
    return {"variant": variant, "world_size": world, "s_per_step": med("time/step"), "s_sample": med("time/sample"),
            "s_train": med("time/train"), "max_abs_kl": max(abs(r["onpolicy/kl"]) for r in rows),
            "peak_gib": max(max(r["memory/train_peak_gib"], r["memory/sample_peak_gib"]) for r in rows) if gpu
            else peak_rss, "peak_kind": "rank 0 CUDA allocated" if gpu else "largest process RSS"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--size", choices=list(SIZES), default="default")
    p.add_argument("--steps", type=int, default=4, help="steps per launch (the first is dropped)")
    p.add_argument("--prompts", type=int, default=16, help="trainer.prompts_per_step (x 8 samples)")
    p.add_argument("--out", default="outputs/bench_scale")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps: at least 2 (the first step is dropped)")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    print(f"{'variant':16} {'world':>5} {'s/step':>8} {'sample':>8} {'train':>8} {'peak GiB':>9}  max|kl|")
    for world in args.world_sizes:
        for variant in args.variants:
            if variant == "ddp/all_reduce" and world == 1:
                continue  # nothing to reduce across ranks: the same run as ddp/tree
            r = run_variant(args, variant, world)
            results.append(r)
            print(f"{variant:16} {world:5d} {r['s_per_step']:8.3f} {r['s_sample']:8.3f} {r['s_train']:8.3f} "
                  f"{r['peak_gib']:9.3f}  {r['max_abs_kl']}", flush=True)
            with open(os.path.join(args.out, "bench_scale.json"), "w") as f:
                json.dump({"device": args.device, "size": args.size, "results": results}, f, indent=1)
    for world in args.world_sizes:
        by = {r["variant"]: r for r in results if r["world_size"] == world}
        if "ddp/tree" in by and "ddp/all_reduce" in by:
            tree, ar = by["ddp/tree"]["s_train"], by["ddp/all_reduce"]["s_train"]
            print(f"world {world}: fixed-order tree vs all_reduce, train time {tree:.3f} s vs {ar:.3f} s "
                  f"({tree / ar:.2f}x)")
    return results


if __name__ == "__main__":
    main()
