"""bench_scale: seconds per RL step, peak memory per device, final-weight hashes, and the cost of the fixed-order
gradient reduction, for `accelerate launch` of recipes/grpo.py at world size N with DDP and FSDP2.

    python -m scripts.bench_scale                                        # CPU (gloo): world sizes 1 and 2
    python -m scripts.bench_scale --device cuda --world-sizes 1 --size medium   # one GPU (NCCL)
    python -m scripts.bench_scale --device cuda --size 1.7b --world-sizes 1 2 --chunks 2 --variants ddp/tree

Variants: `ddp/tree` (replicated masters, the fixed-order chunk tree: the default), `ddp/all_reduce` (the
backend's all_reduce instead, `trainer.grad_reduction`; only for world size > 1, where it differs), `fsdp2`
(fully_shard, FSDP's reduce-scatter; the recipe pins NCCL). Each is a fresh launch of the tiny embedded task's
prompts (configs/tiny-cpu.yaml through scripts/bench_scale_recipe.py) for `--steps` steps without SFT warm
start, bf16 weights with fp32 masters. `--size` picks the model: the tiny family, or random weights of
Qwen3-1.7B's / Qwen3-8B's shape (151,936 vocab; the hashed reward `bench_text_hash`, lr 1e-6, activation
checkpointing). Step 1 (compile, allocator warm-up) is dropped and the median of the rest reported. Memory: on
CUDA rank 0's peak allocated in the sample and train phases (its metrics); on CPU the largest peak RSS of any
process of the launch (getrusage of the launcher's reaped children). Every step must log onpolicy/kl == 0.0;
each launch's final policy is hashed (`--repeat` for run-to-run, `--chunks` for world size 1 vs N).
Writes bench_scale.json to --out. Left out: the collective's time alone (docs/distributed.md measures gloo's),
multi-node, real checkpoints (the weights are random), checkpoints with optimizer state (save_only_model).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

from scripts.common import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"ddp/tree": ("ddp", "tree"), "ddp/all_reduce": ("ddp", "all_reduce"), "fsdp2": ("fsdp2", "tree")}
ACCELERATE_CONFIGS = {("ddp", "cpu"): "cpu_ddp.yaml", ("ddp", "cuda"): "ddp.yaml",
                      ("fsdp2", "cpu"): "cpu_fsdp2.yaml", ("fsdp2", "cuda"): "fsdp2.yaml"}
_QWEN3 = ("{{hidden_size: {}, intermediate_size: {}, num_hidden_layers: {}, num_attention_heads: {}, "
          "num_key_value_heads: 8, head_dim: 128, vocab_size: 151936, tie_word_embeddings: {}, rope_theta: 1.0e+6, "
          "max_position_embeddings: 2048}}")
SIZES = {"default": None,  # the config's tiny model (128 hidden, 2 layers)
         "medium": "{hidden_size: 512, intermediate_size: 1536, num_hidden_layers: 8, num_attention_heads: 8, "
                   "num_key_value_heads: 2, head_dim: 64, max_position_embeddings: 64}",
         "1.7b": _QWEN3.format(2048, 6144, 28, 16, "true"),  # Qwen3-1.7B's shape, random weights
         "8b": _QWEN3.format(4096, 12288, 36, 32, "false")}  # Qwen3-8B's shape
LARGE = {"trainer.lr": "1.0e-6", "trainer.warmup_steps": "0", "trainer.micro_batch_tokens": "8192",
         "trainer.activation_checkpointing": "true", "engine.max_num_batched_tokens": "8192",
         "rewards": "[{name: bench_text_hash, weight: 1.0}]"}  # the Qwen3 sizes: a real-size step's settings
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def launch_cmd(args, variant: str, world: int, out: str) -> list[str]:
    layout, reduction = VARIANTS[variant]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(REPO, "configs/accelerate", ACCELERATE_CONFIGS[layout, args.device]),
           "--num_processes", str(world), "--main_process_port", str(free_port()),
           "--module", "scripts.bench_scale_recipe", "--config", os.path.join(REPO, "configs/tiny-cpu.yaml"),
           "--model.device", args.device, "--model.dtype", "bfloat16", "--trainer.steps", str(args.steps),
           "--trainer.sft_warmup_steps", "0", "--trainer.prompts_per_step", str(args.prompts),
           "--trainer.grad_reduction", reduction, "--trainer.save_only_model", "true",
           "--logging.plot", "false", "--logging.output_dir", out]
    if SIZES[args.size]:
        cmd += ["--model.tiny", SIZES[args.size]]
    if args.size in ("1.7b", "8b"):
        cmd += [a for key, value in LARGE.items() for a in (f"--{key}", value)]
    if args.max_tokens:
        cmd += ["--sampling.max_tokens", str(args.max_tokens)]
    if args.device == "cuda":
        cmd += ["--engine.use_cuda_graphs", "true"]
    if args.chunks:
        cmd += ["--trainer.reduction_chunks", str(args.chunks)]
    return cmd


def weights_hash(out: str, step: int) -> str:
    """sha256 of the final policy's safetensors (the bf16 weights the engine samples with)."""
    h = hashlib.sha256()
    with open(os.path.join(out, f"checkpoints/step-{step}/policy/model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def run_variant(args, variant: str, world: int) -> dict:
    """One launch; -> seconds per step (median after step 1), phase times, peak memory, max |kl|."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        res = subprocess.run([sys.executable, "-c", _PEAK_RSS, *launch_cmd(args, variant, world, out)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{variant} at world size {world} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        digest, kls = weights_hash(out, args.steps), [r["onpolicy/kl"] for r in rows]
        rows = rows[1:]
    peak_rss = int(res.stdout.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]) / 2**20
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    gpu = "memory/train_peak_gib" in rows[0]
    return {"variant": variant, "world_size": world, "chunks": args.chunks or world, "weights_sha256": digest,
            "kl_every_step": kls, "s_per_step": med("time/step"), "s_sample": med("time/sample"),
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
    p.add_argument("--max-tokens", type=int, default=0, help="sampling.max_tokens (0: the config's)")
    p.add_argument("--chunks", type=int, default=0, help="trainer.reduction_chunks (0: the world size)")
    p.add_argument("--repeat", type=int, default=1, help="launches per variant (run-to-run weight hashes)")
    p.add_argument("--out", default="outputs/bench_scale")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps: at least 2 (the first step is dropped)")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    print(f"{'variant':16} {'world':>5} {'s/step':>8} {'sample':>8} {'train':>8} {'peak GiB':>9}  max|kl|  weights")
    for world in args.world_sizes:
        for variant in args.variants:
            if variant == "ddp/all_reduce" and world == 1:
                continue  # nothing to reduce across ranks: the same run as ddp/tree
            for _ in range(args.repeat):
                r = run_variant(args, variant, world)
                results.append(r)
                print(f"{variant:16} {world:5d} {r['s_per_step']:8.3f} {r['s_sample']:8.3f} {r['s_train']:8.3f} "
                      f"{r['peak_gib']:9.3f}  {r['max_abs_kl']}  {r['weights_sha256'][:12]}", flush=True)
                with open(os.path.join(args.out, "bench_scale.json"), "w") as f:
                    json.dump({"device": args.device, "size": args.size, "steps": args.steps,
                               "max_tokens": args.max_tokens, "prompts": args.prompts, "results": results}, f, indent=1)
    report(results)
    return results


def report(results: list[dict]) -> None:
    """The fixed-order tree's cost against all_reduce, and which runs ended with identical weights."""
    for world in sorted({r["world_size"] for r in results}):
        by = {r["variant"]: r for r in results if r["world_size"] == world}
        if "ddp/tree" in by and "ddp/all_reduce" in by:
            tree, ar = by["ddp/tree"]["s_train"], by["ddp/all_reduce"]["s_train"]
            print(f"world {world}: fixed-order tree vs all_reduce, train time {tree:.3f} s vs {ar:.3f} s "
                  f"({tree / ar:.2f}x)")
    for variant in ("ddp/tree", "fsdp2"):
        runs = [r for r in results if r["variant"] == variant]
        if len(runs) > 1:
            same = len({r["weights_sha256"] for r in runs}) == 1
            where = ", ".join(f"world {r['world_size']} ({r['chunks']} chunks)" for r in runs)
            print(f"{variant}: final weights {'IDENTICAL' if same else 'DIFFER'} across {where}")


if __name__ == "__main__":
    main()
