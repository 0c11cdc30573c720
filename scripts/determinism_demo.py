"""determinism_demo: the same prompt N times at temperature 0 among concurrent requests of varying length.

Each copy of the probe prompt lands in a different batch (fillers of random length and max_tokens, a small
per-step token budget, staggered admission), so with torch's default ops its greedy completion can change
with the batch. Prints the number of unique probe completions with the batch-invariant kernels (must be 1)
and with invariant=False, plus the first position where copies diverge.

    python -m scripts.determinism_demo                       # tiny model, CPU, small
    python -m scripts.determinism_demo --n 1000 --device cuda --dtype bfloat16   # random Qwen3-0.6B shape

The invariant=False run uses the torch reference attention (one padded SDPA call, a host sync per layer,
no CUDA graphs): slower on GPU.
Left out: real checkpoints' text (random weights, token ids only), sampling with temperature > 0.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from scripts.common import build_model


def first_divergence(completions: list[list[int]]) -> int | None:
    """First position where any completion differs from the most common one (None if all equal)."""
    ref = list(collections.Counter(map(tuple, completions)).most_common(1)[0][0])
    firsts = []
    for c in completions:
        if c == ref:
            continue
        n = min(len(c), len(ref))
        firsts.append(next((i for i in range(n) if c[i] != ref[i]), n))
    return min(firsts) if firsts else None


def run(model, n: int, max_tokens: int, invariant: bool, seed: int, budget: int, max_num_seqs: int) -> dict:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    probe = torch.randint(4, vocab, (24,), generator=g).tolist()
    prompts, params = [], []
    for i in range(n):  # each copy is followed by 0-2 fillers of random shape
        prompts.append(probe)
        params.append(SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        for _ in range(i % 3):
            length = int(torch.randint(1, 96, (1,), generator=g))
            prompts.append(torch.randint(4, vocab, (length,), generator=g).tolist())
            params.append(SamplingParams(temperature=0.0, max_tokens=int(torch.randint(1, 2 * max_tokens, (1,), generator=g)),
                                         ignore_eos=True))
    cfg = EngineConfig(max_num_batched_tokens=budget, max_num_seqs=max_num_seqs)
    llm = LLM(model, None, cfg)
    t0 = time.perf_counter()
    with kernels.invariant_mode(invariant):
        outs = llm.generate(prompts, params)
    secs = time.perf_counter() - t0
    probes = [o.outputs[0] for o, p in zip(outs, prompts) if p is probe]
    completions = [c.token_ids for c in probes]
    lp_unique = len({tuple(c.logprobs.tolist()) for c in probes})
    return {"invariant": invariant, "copies": len(completions), "unique": len(set(map(tuple, completions))),
            "unique_logprob_vectors": lp_unique,
            "first_divergence": first_divergence(completions), "seconds": round(secs, 2),
            "steps": llm.stats["steps"], "requests": len(prompts)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="copies of the probe prompt")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", default=None, help='"tiny", "qwen3-0.6b" (random weights) or an HF dir; '
                    "default: tiny on CPU, qwen3-0.6b on CUDA")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 16 on CPU, 128 on CUDA")
    ap.add_argument("--budget", type=int, default=None, help="max_num_batched_tokens (default 64 CPU, 2048 CUDA)")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default 16 CPU, 256 CUDA")
    ap.add_argument("--default-n", type=int, default=None, help="copies for the invariant=False run (default: --n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    from onpolicy import determinism

    determinism.enable(seed=args.seed)
    cuda = args.device.startswith("cuda")
    model, _ = build_model(args.model or ("qwen3-0.6b" if cuda else "tiny"), args.device, args.dtype)
    max_tokens = args.max_tokens or (128 if cuda else 16)
    budget = args.budget or (2048 if cuda else 64)
    seqs = args.max_num_seqs or (256 if cuda else 16)
    results = []
    default_n = args.default_n or args.n
    for invariant in (True, False):
        r = run(model, args.n if invariant else default_n, max_tokens, invariant, args.seed, budget, seqs)
        results.append(r)
        label = "invariant kernels " if invariant else "invariant=False   "
        div = "-" if r["first_divergence"] is None else r["first_divergence"]
        print(f"{label}: {r['unique']} unique completion(s) of {r['copies']} copies "
              f"(first divergent position: {div}; {r['unique_logprob_vectors']} distinct logprob vectors; "
              f"{r['requests']} requests, {r['steps']} steps, {r['seconds']} s)", flush=True)
    ok = results[0]["unique"] == 1 and results[0]["unique_logprob_vectors"] == 1
    print("PASS: batch-invariant greedy decoding is deterministic" if ok else "FAIL: invariant mode gave >1 completion")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
