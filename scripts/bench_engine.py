"""bench_engine: output tokens/s of our engine (invariant kernels, and invariant=False) vs HF `generate`.

Default (H100): Qwen3-0.6B shape, random bf16 weights, batch sizes 1/16/64/256, 32-token random prompts,
512 new tokens (eos ignored), greedy for every system. HF runs a transformers Qwen3ForCausalLM built from the same config and weights
(saved with `save_pretrained`, loaded with `from_pretrained`), greedy, with min_new_tokens = max_new_tokens.
Our engine admits every prompt in one prefill step (max_num_batched_tokens >= batch x prompt length, as vLLM's
offline default of 8192 tokens and more); each system gets one short warm-up generate per batch size (Triton compile, CUDA-graph capture) before timing.
"default" (invariant=False) is the fair comparison stack: cuBLAS GEMMs (F.linear), torch's default norms / RoPE /
activation, torch's logsumexp for the reported logprob, the same paged Triton attention and sampling kernel (no
faster paged decode kernel runs here), and CUDA graphs like the invariant engine.
"sync" is the invariant engine with engine.async_scheduling=false (each step waits for its tokens before the
host schedules the next), to show what overlapping host and GPU buys.
Prints tok/s and ratios; writes bench_engine.json (after every measurement) and bench_engine.png to --out.
`--quick`: the tiny model on CPU, batch 1/4, 8 new tokens (a smoke run, not a measurement).
Left out: time-to-first-token / latency percentiles, online serving, prompts of mixed length.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from scripts.common import build_model, default_device, device_name, sync

SYSTEMS = ("invariant", "sync", "default", "hf")


def prompts_for(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed + batch)
    return torch.randint(4, vocab, (batch, prompt_len), generator=g).tolist()


def bench_ours(model, invariant: bool, batches, prompt_len, new_tokens, graphs: bool, seed: int,
               async_scheduling: bool = True):
    block = 16
    need = max(batches) * -(-(prompt_len + new_tokens) // block) + 16
    cfg = EngineConfig(num_blocks=need, block_size=block, max_num_seqs=max(batches),
                       max_num_batched_tokens=max(8192, prompt_len * max(batches)), use_cuda_graphs=graphs,
                       async_scheduling=async_scheduling)
    llm = LLM(model, None, cfg, seed=seed)
    device = model.lm_head_weight.device
    warm = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    with kernels.invariant_mode(invariant):  # every batch size once: its CUDA graph is captured before timing
        for b in batches:
            llm.generate(prompts_for(b, prompt_len, model.config.vocab_size, seed + 999), warm)
    for b in batches:
        prompts = prompts_for(b, prompt_len, model.config.vocab_size, seed)
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        llm.reset_prefix_cache()
        sync(device)
        t0 = time.perf_counter()
        with kernels.invariant_mode(invariant):
            outs = llm.generate(prompts, params)
        sync(device)
        secs = time.perf_counter() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        yield b, toks, secs
    del llm


def bench_hf(model, batches, prompt_len, new_tokens, seed: int):
    from transformers import AutoModelForCausalLM

    from onpolicy.model import save_pretrained

    device = model.lm_head_weight.device
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=model.lm_head_weight.dtype).to(device).eval()
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        warm = torch.tensor(prompts_for(1, prompt_len, model.config.vocab_size, seed + 999), device=device)
        hf.generate(warm, max_new_tokens=4, min_new_tokens=4, **kw)
        for b in batches:
            ids = torch.tensor(prompts_for(b, prompt_len, model.config.vocab_size, seed), device=device)
            sync(device)
            t0 = time.perf_counter()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, **kw)
            sync(device)
            secs = time.perf_counter() - t0
            yield b, int(out.shape[0] * (out.shape[1] - prompt_len)), secs
    del hf


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system in SYSTEMS:
        rows = [r for r in results if r["system"] == system]
        if rows:
            ax.plot([r["batch"] for r in rows], [r["tok_s"] for r in rows], marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("engine throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/bench_engine")
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, batch 1/4, 8 new tokens")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    ap.add_argument("--batch-sizes", default=None, help="comma separated (default 1,16,64,256)")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 512)")
    ap.add_argument("--hf-max-tokens", type=int, default=None, help="new tokens for HF (default: --max-tokens)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="subset of invariant,sync,default,hf (run in that order)")
    ap.add_argument("--default-batch-sizes", default=None,
                    help="batch sizes for the invariant=False system (default: --batch-sizes)")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from onpolicy import determinism

    determinism.enable(seed=args.seed)
    device = args.device or default_device(args.quick)
    dtype = args.dtype or ("float32" if args.quick else "bfloat16")
    batches = [int(x) for x in (args.batch_sizes or ("1,4" if args.quick else "1,16,64,256")).split(",")]
    default_batches = [int(x) for x in (args.default_batch_sizes or ",".join(map(str, batches))).split(",")]
    new_tokens = args.max_tokens or (8 if args.quick else 512)
    hf_tokens = args.hf_max_tokens or new_tokens
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise ValueError(f"--systems: unknown {bad}; allowed: {', '.join(SYSTEMS)}")
    os.makedirs(args.out, exist_ok=True)
    model, _ = build_model("tiny" if args.quick else "qwen3-0.6b", device, dtype)
    meta = {"device": device_name(device), "dtype": dtype,
            "prompt_len": args.prompt_len, "new_tokens": new_tokens, "hf_new_tokens": hf_tokens,
            "cuda_graphs_invariant": not args.no_cuda_graphs, "cuda_graphs_default": not args.no_cuda_graphs,
            "default_batches": default_batches, "torch": torch.__version__}
    results = []

    def save():
        with open(os.path.join(args.out, "bench_engine.json"), "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)

    for system in systems:
        if system == "hf":
            runs = bench_hf(model, batches, args.prompt_len, hf_tokens, args.seed)
        elif system in ("invariant", "sync"):
            runs = bench_ours(model, True, batches, args.prompt_len, new_tokens, not args.no_cuda_graphs, args.seed,
                              async_scheduling=system == "invariant")
        else:
            runs = bench_ours(model, False, default_batches, args.prompt_len, new_tokens, not args.no_cuda_graphs,
                              args.seed)
        for b, toks, secs in runs:
            results.append({"system": system, "batch": b, "tokens": toks, "seconds": round(secs, 3),
                            "tok_s": round(toks / secs, 1)})
            print(f"{system:>9}  batch {b:>4}: {toks:>7} tokens in {secs:8.2f} s = {toks / secs:10.1f} tok/s", flush=True)
            save()
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    rate = {(r["system"], r["batch"]): r["tok_s"] for r in results}
    print("ratios (tok/s):")
    for b in batches:
        parts = []
        for num, den in (("invariant", "default"), ("invariant", "sync"), ("invariant", "hf"), ("default", "hf")):
            if (num, b) in rate and (den, b) in rate:
                parts.append(f"{num}/{den} = {rate[num, b] / rate[den, b]:.2f}")
        print(f"  batch {b:>4}: " + ", ".join(parts))
    save()
    plot(results, os.path.join(args.out, "bench_engine.png"))
    print(f"wrote {args.out}/bench_engine.json and bench_engine.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
