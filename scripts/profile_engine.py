"""profile_engine: torch.profiler over a few decode steps of the engine (Qwen3-0.6B shape, random bf16, H100).

Prints, per (mode, batch): prefill time, per-step wall time split into runner.step / graph staging / the rest
(scheduler, bookkeeping), and the top CUDA / CPU ops of one more generate. Used for docs/invariance.md's engine
section (`--modes invariant,default`). Left out: prefill profiling, long contexts (see bench_engine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from onpolicy import determinism, kernels  # noqa: E402
from onpolicy.engine import LLM, EngineConfig, SamplingParams  # noqa: E402
from onpolicy.model import CausalLM  # noqa: E402
from onpolicy.model.tiny import qwen3_0_6b_config  # noqa: E402


def timed_generate(llm, prompts, sp) -> float:
    """generate() once with runner.step (and graph staging) timed per call; prints the split; -> seconds."""
    spent = {"step": 0.0, "stage": 0.0, "each": []}
    plain_step, graphs = llm.runner.step, llm.runner.graphs
    plain_stage = graphs._stage if graphs is not None else None

    def timed_step(chunks):
        t = time.perf_counter()
        out = plain_step(chunks)
        spent["step"] += time.perf_counter() - t
        spent["each"].append(round((time.perf_counter() - t) * 1e3, 2))
        return out

    def timed_stage(*a):
        t = time.perf_counter()
        plain_stage(*a)
        spent["stage"] += time.perf_counter() - t

    llm.runner.step = timed_step
    if graphs is not None:
        graphs._stage = timed_stage
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    llm.generate(prompts, sp)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    llm.runner.step = plain_step
    if graphs is not None:
        graphs._stage = plain_stage
        print(f"   graphs disabled={graphs.disabled} replays={graphs.replays} keys={sorted(graphs.graphs, key=str)}")
    each, n = sorted(spent["each"]), len(spent["each"])
    print(f"   step ms: median {each[n // 2]}, max 5 {each[-5:]}, min {each[0]}")
    print(f"   runner.step {spent['step'] * 1e3 / n:.2f} ms/call (of which staging {spent['stage'] * 1e3 / n:.2f}), "
          f"outside {(dt - spent['step']) * 1e3 / n:.2f} ms/call")
    return dt


def profile_batch(llm, mode: str, b: int, args) -> None:
    prompts = torch.randint(4, 150000, (b, 32), generator=torch.Generator().manual_seed(b)).tolist()
    sp = SamplingParams(temperature=args.temperature, max_tokens=args.steps, ignore_eos=True)
    with kernels.invariant_mode(mode == "invariant"):
        llm.generate(prompts, sp)  # warm (compile, capture)
        one = SamplingParams(temperature=args.temperature, max_tokens=1, ignore_eos=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.generate(prompts, one)
        torch.cuda.synchronize()
        print(f"== {mode} batch {b}: prefill + 1 token {time.perf_counter() - t0:.3f} s", flush=True)
        dt = timed_generate(llm, prompts, sp)
        print(f"== {mode} batch {b} T={args.temperature}: {args.steps} steps in {dt:.3f} s = "
              f"{dt / args.steps * 1e3:.2f} ms/step, {b * args.steps / dt:.0f} tok/s", flush=True)
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
    args = ap.parse_args()
    determinism.enable(seed=0)
    model = CausalLM(qwen3_0_6b_config(dtype="bfloat16", max_position_embeddings=4096)).cuda().eval()
    batches = [int(b) for b in args.batches.split(",")]
    for mode in args.modes.split(","):
        cfg = EngineConfig(num_blocks=max(batches) * 40 + 16, block_size=16, max_num_seqs=max(batches),
                           max_num_batched_tokens=2048, use_cuda_graphs=bool(args.graphs))
        llm = LLM(model, None, cfg, seed=0)
        for b in batches:
            profile_batch(llm, mode, b, args)
        del llm
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
