"""profile_engine: torch.profiler over a few decode steps of the engine (Qwen3-0.6B shape, random bf16, H100).

Prints, per (mode, batch): prefill time, per-step wall time split into runner.step / graph staging / the rest
(scheduler, bookkeeping), and the top CUDA / CPU ops of one more generate. `--sync 1`:
engine.async_scheduling=false. Used for docs/invariance.md's engine
section (`--modes invariant,default`). Left out: prefill profiling, long contexts (see bench_engine).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from onpolicy import determinism, kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from scripts.common import build_model


def timed_generate(llm, prompts, sp) -> float:
    """generate() once with the runner's calls timed: `step` (a synchronous step: forward + read-back),
    `launch` (async: staging + graph launch, no wait), `InFlight.result` (the host waiting for the GPU), graph
    staging; prints the split per step; -> seconds. Host busy = wall - waiting."""
    from onpolicy.engine.runner import InFlight

    spent = {"step": 0.0, "launch": 0.0, "wait": 0.0, "stage": 0.0}
    runner, graphs = llm.runner, llm.runner.graphs
    plain = {"step": runner.step, "launch": runner.launch, "stage": graphs.stage if graphs is not None else None,
             "wait": InFlight.result}

    def timed(name, fn):
        def call(*a):
            t = time.perf_counter()
            out = fn(*a)
            spent[name] += time.perf_counter() - t
            return out
        return call

    runner.step, runner.launch = timed("step", plain["step"]), timed("launch", plain["launch"])
    InFlight.result = timed("wait", plain["wait"])
    if graphs is not None:
        graphs.stage = timed("stage", plain["stage"])
    steps0 = llm.stats["steps"]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        llm.generate(prompts, sp)
        torch.cuda.synchronize()
    finally:
        runner.step, runner.launch, InFlight.result = plain["step"], plain["launch"], plain["wait"]
        if graphs is not None:
            del graphs.stage  # back to the class's method
    dt = time.perf_counter() - t0
    n = llm.stats["steps"] - steps0
    if graphs is not None:
        print(f"   graphs disabled={graphs.disabled} replays={graphs.replays} keys={sorted(graphs.graphs, key=str)}")
    ms = {k: v * 1e3 / n for k, v in spent.items()}
    print(f"   per step ({n} steps, {llm.stats['async_steps']} async so far): wall {dt * 1e3 / n:.2f} ms; sync "
          f"runner.step {ms['step']:.2f}, launch {ms['launch']:.2f} (staging {ms['stage']:.2f}), waiting for the "
          f"GPU {ms['wait']:.2f}, host busy {dt * 1e3 / n - ms['wait'] - ms['step']:.2f} ms + sync steps' host part")
    return dt


def profile_batch(llm, mode: str, b: int, args) -> None:
    prompts = torch.randint(4, 150000, (b, 32), generator=torch.Generator().manual_seed(b)).tolist()
    sp = SamplingParams(temperature=args.temperature, max_tokens=args.steps, ignore_eos=True)
    with kernels.invariant_mode(mode == "invariant"):
        llm.generate(prompts, sp)  # warm (compile, capture)
        one = SamplingParams(temperature=args.temperature, max_tokens=1, ignore_eos=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.reset_prefix_cache()
        llm.generate(prompts, one)
        torch.cuda.synchronize()
        print(f"== {mode} batch {b}: prefill + 1 token {time.perf_counter() - t0:.3f} s", flush=True)
        llm.reset_prefix_cache()  # else the hits change the prefill chunks: new shapes, new graph buckets
        dt = timed_generate(llm, prompts, sp)
        print(f"== {mode} batch {b} T={args.temperature}: {args.steps} steps in {dt:.3f} s = "
              f"{dt / args.steps * 1e3:.2f} ms/step, {b * args.steps / dt:.0f} tok/s", flush=True)
        llm.reset_prefix_cache()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            llm.generate(prompts, sp)
            torch.cuda.synchronize()
    ka = prof.key_averages()
    print(ka.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    print(ka.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--modes", default="invariant", help="comma separated: invariant, default")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--graphs", type=int, default=1)
    ap.add_argument("--sync", type=int, default=0, help="1: the synchronous engine (async_scheduling=false)")
    args = ap.parse_args()
    determinism.enable(seed=0)
    model, _ = build_model("qwen3-0.6b", "cuda", "bfloat16")
    batches = [int(b) for b in args.batches.split(",")]
    for mode in args.modes.split(","):
        cfg = EngineConfig(num_blocks=max(batches) * 40 + 16, block_size=16, max_num_seqs=max(batches),
                           max_num_batched_tokens=2048, use_cuda_graphs=bool(args.graphs),
                           async_scheduling=not args.sync)
        llm = LLM(model, None, cfg, seed=0)
        for b in batches:
            profile_batch(llm, mode, b, args)
        del llm
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
