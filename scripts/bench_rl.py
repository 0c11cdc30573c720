"""bench_rl: seconds per RL step (sample / train) and peak GPU memory per phase, onpolicy vs TRL.

Default (H100): random bf16 weights of Qwen3-0.6B's shape at 16 prompts x 8 samples x 256 tokens and 32x8x512,
Qwen3-1.7B's shape at 32x8x1024; 10-token random prompts, completions of exactly the given length (ignore_eos),
temperature 1.0, random rewards (seeded). A step is `onpolicy.trainer`'s own: engine generate -> ScoredBatch ->
`update_policy` (micro-batches of `--micro-batch-tokens`, activation checkpointing, fp32 masters; the KV cache
sized by `trainer.memory.kv_cache_blocks`). Systems: onpolicy invariant (Triton batch-invariant kernels, CUDA
graphs), onpolicy `invariant: false` (torch's default ops: cuBLAS, flash varlen training attention, chunked-vocab
logprobs; the engine eager), and TRL `GRPOTrainer`: its figures recorded in issue 10 (marked "recorded"), with
a printed note -- the live TRL run is left out (trl is on neither the bench machine nor CI). Each system gets
`--warmup` untimed steps (Triton compile, graph capture) then `--steps` timed ones; the invariant system also
checks onpolicy/kl == 0.0 every step.
Writes bench_rl.json (after every measurement) and bench_rl.png to --out; prints the table with ratios.
`--quick`: the tiny model on CPU, 2x4x8, one timed step per system (a smoke run, not a measurement).
Left out: real data and rewards, multi-GPU, sequence packing across steps, TRL's vLLM backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from types import SimpleNamespace

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {"0.6b-16x8x256": ("0.6b", 16, 8, 256), "0.6b-32x8x512": ("0.6b", 32, 8, 512),
             "1.7b-32x8x1024": ("1.7b", 32, 8, 1024)}
QUICK_WORKLOADS = {"tiny-2x4x8": ("tiny", 2, 4, 8)}
# TRL 1.16 GRPOTrainer (HF generate), measured on the H100 for issue 10: (s/step, peak GiB).
TRL_RECORDED = {"0.6b-16x8x256": (12.0, 8.5), "0.6b-32x8x512": (22.3, 22.4)}
SYSTEMS = ("invariant", "default", "trl")
PROMPT_LEN = 10


def model_config(shape: str):
    from onpolicy.model.tiny import qwen3_0_6b_config, tiny_config

    if shape == "tiny":
        return tiny_config(dtype="bfloat16", head_dim=64, max_position_embeddings=64)
    cfg = qwen3_0_6b_config(max_position_embeddings=2048)
    return cfg if shape == "0.6b" else cfg.replace(hidden_size=2048, intermediate_size=6144)


def run_config(work, invariant: bool, args):
    """An ExperimentConfig for the trainer and KV sizing (the model is built here, not from model.path)."""
    from onpolicy.config import parse_args

    _, n, g, length = work
    over = {"model.dtype": "bfloat16", "model.device": args.device, "data.max_prompt_tokens": PROMPT_LEN,
            "sampling.num_generations": g, "sampling.max_tokens": length, "trainer.prompts_per_step": n,
            "trainer.lr": 1e-6, "trainer.warmup_steps": 0, "trainer.invariant": invariant,
            "trainer.strict_onpolicy": False, "trainer.micro_batch_tokens": args.micro_batch_tokens,
            "trainer.activation_checkpointing": not args.no_checkpointing, "engine.max_num_seqs": n * g,
            "engine.max_num_batched_tokens": 16384, "engine.use_cuda_graphs": args.device == "cuda",
            "logging.report_to": ["console"]}
    argv = ["--config", os.path.join(REPO, "configs", "tiny-cpu.yaml")]
    for k, v in over.items():
        argv += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rollout(llm, work, step: int, vocab: int):
    from onpolicy.engine import SamplingParams
    from onpolicy.trainer.rollout import Rollout

    _, n, g, length = work
    gen = torch.Generator().manual_seed(1000 + step)
    prompts = torch.randint(4, vocab, (n, PROMPT_LEN), generator=gen).tolist()
    params = [SamplingParams(n=g, temperature=1.0, max_tokens=length, ignore_eos=True, logprobs=True,
                             seed=step * 100003 + i) for i in range(n)]
    ro = Rollout(group_size=g)
    for i, (ids, req) in enumerate(zip(prompts, llm.generate(prompts, params))):
        for comp in sorted(req.outputs, key=lambda c: c.index):
            ro.prompt_ids.append(ids)
            ro.completion_ids.append(list(comp.token_ids))
            ro.sampler_logprobs.append(comp.logprobs.float().cpu())
            ro.texts.append("")
            ro.finish_reasons.append(comp.finish_reason)
            ro.group_index.append(i)
    return ro


def _scored(ro, step: int):
    from onpolicy.trainer.advantages import group_advantages
    from onpolicy.trainer.scoring import ScoredBatch

    rewards = torch.rand(len(ro.seq_lens), generator=torch.Generator().manual_seed(step))
    return ScoredBatch(rollout=ro, rewards=rewards, advantages=group_advantages(rewards, ro.group_size, "grpo"),
                       loss_mask=torch.ones(ro.num_tokens, dtype=torch.bool),
                       truncated=torch.tensor([f == "length" for f in ro.finish_reasons]), kept_groups=len(ro.seq_lens)
                       // ro.group_size, reward_by_name={})


def bench_onpolicy(name, work, state, invariant: bool, args):
    """Warm-up + timed steps of one onpolicy system; -> a result row (means over the timed steps)."""
    from onpolicy import kernels
    from onpolicy.engine import LLM
    from onpolicy.model import CausalLM
    from onpolicy.trainer.memory import PhasePeak, kv_cache_blocks
    from onpolicy.trainer.precision import MasterWeightAdamW
    from onpolicy.trainer.update import update_policy

    device = torch.device(args.device)
    warmup, steps = (args.warmup, args.steps) if invariant else (args.default_warmup, args.default_steps)
    cfg = run_config(work, invariant, args)
    mc = model_config(work[0])
    with kernels.invariant_mode(invariant):
        model = CausalLM(mc, init=False).to(device)
        model.load_state_dict(state)
        model.activation_checkpointing = cfg.trainer.activation_checkpointing
        params = [p for p in model.parameters() if p.requires_grad]
        opt = MasterWeightAdamW(params, lr=cfg.trainer.lr, betas=(0.9, 0.99), weight_decay=0.0)
        engine = dataclasses.replace(cfg.engine, num_blocks=kv_cache_blocks(cfg, model, device))
        llm = LLM(model, None, engine, seed=0)
        run = SimpleNamespace(cfg=cfg, device=device, model=model, optimizer=opt, llm=llm, ref_model=None,
                              params=params)
        peak, rows = PhasePeak(device), []
        for step in range(warmup + steps):
            peak.start()
            t0 = time.perf_counter()
            with torch.no_grad():
                ro = _rollout(llm, work, step, mc.vocab_size)
            _sync(device)
            t_sample, sample_peak = time.perf_counter() - t0, peak.gib()
            peak.start()
            t1 = time.perf_counter()
            m = update_policy(run, _scored(ro, step), step)
            _sync(device)
            rows.append({"sample_s": t_sample, "train_s": time.perf_counter() - t1, "sample_peak_gib": sample_peak,
                         "train_peak_gib": peak.gib(), "kl": m["onpolicy/kl"], "tokens": ro.num_tokens})
            print(f"  {name} {'invariant' if invariant else 'default'} step {step}: {rows[-1]}", flush=True)
    del run, llm, opt, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timed = rows[warmup:]
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    peaks = [r[k] for r in rows for k in ("sample_peak_gib", "train_peak_gib") if r[k] is not None]
    return {"workload": name, "system": "invariant" if invariant else "default", "sample_s": mean("sample_s"),
            "train_s": mean("train_s"), "step_s": mean("sample_s") + mean("train_s"),
            "sample_peak_gib": max((r["sample_peak_gib"] or 0.0) for r in rows) if peaks else None,
            "train_peak_gib": max((r["train_peak_gib"] or 0.0) for r in rows) if peaks else None,
            "peak_gib": max(peaks) if peaks else None, "kl": [r["kl"] for r in rows], "kv_blocks": engine.num_blocks,
            "tokens_per_step": timed[0]["tokens"]}


def trl_row(name):
    """TRL's figures recorded in issue 10 (TRL 1.16 GRPOTrainer, HF generate, same shapes, on the H100); a
    live TRL run is left out: neither the bench machine nor CI has trl (a note says so)."""
    try:
        import trl  # noqa: F401
        note = "trl imports, but the live TRL run is not implemented here"
    except ImportError:
        note = "trl is not importable here"
    print(f"  {name} trl: {note}; using the TRL figures recorded in issue 10", flush=True)
    if name not in TRL_RECORDED:
        return None
    s, gib = TRL_RECORDED[name]
    return {"workload": name, "system": "trl", "recorded": True, "step_s": s, "peak_gib": gib}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["workload"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(SYSTEMS)
    for j, system in enumerate(SYSTEMS):
        by = {r["workload"]: r for r in results if r["system"] == system}
        xs = [i + j * width for i, n in enumerate(names) if n in by]
        axes[0].bar(xs, [by[n]["step_s"] for n in names if n in by], width, label=system)
        axes[1].bar(xs, [by[n]["peak_gib"] or 0.0 for n in names if n in by], width, label=system)
    for ax, label in zip(axes, ("seconds per RL step", "peak GPU memory (GiB)")):
        ax.set_xticks([i + width for i in range(len(names))], names)
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results) -> str:
    lines = ["| workload | system | s/step (sample + train) | peak GiB (sample / train) | vs invariant |",
             "|---|---|---|---|---|"]
    inv = {r["workload"]: r["step_s"] for r in results if r["system"] == "invariant"}
    for r in results:
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        if r.get("sample_peak_gib") is not None:
            peak += f" ({r['sample_peak_gib']:.1f} / {r['train_peak_gib']:.1f})"
        split = f" ({r['sample_s']:.2f} + {r['train_s']:.2f})" if "sample_s" in r else ""
        ratio = f"{r['step_s'] / inv[r['workload']]:.2f}x" if r["workload"] in inv else "-"
        system = r["system"] + (" (recorded)" if r.get("recorded") else "")
        lines.append(f"| {r['workload']} | {system} | {r['step_s']:.2f}{split} | {peak} | {ratio} |")
    return "\n".join(lines)


def write_json(args, results, skipped) -> None:
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
            "default_steps": args.default_steps, "default_warmup": args.default_warmup,
            "micro_batch_tokens": args.micro_batch_tokens, "checkpointing": not args.no_checkpointing,
            "prompt_len": PROMPT_LEN, "skipped": skipped}
    with open(os.path.join(args.out, "bench_rl.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/bench_rl")
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, 2x4x8 (smoke run)")
    ap.add_argument("--workloads", default=None, help=f"comma separated subset of {', '.join(WORKLOADS)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="subset of invariant,default,trl")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per system (default 2; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per system (default 1; quick 0)")
    ap.add_argument("--default-steps", type=int, default=None, help="timed steps of invariant: false (default --steps)")
    ap.add_argument("--default-warmup", type=int, default=None, help="its untimed steps (default --warmup)")
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--no-checkpointing", action="store_true", help="trainer.activation_checkpointing: false")
    ap.add_argument("--time-budget", type=float, default=None, help="skip measurements that start after N s")
    args = ap.parse_args(argv)
    args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    args.steps = args.steps if args.steps is not None else (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.default_steps = args.steps if args.default_steps is None else args.default_steps
    args.default_warmup = args.warmup if args.default_warmup is None else args.default_warmup
    pool = QUICK_WORKLOADS if args.quick else WORKLOADS
    names = args.workloads.split(",") if args.workloads else list(pool)
    bad = [n for n in names if n not in pool]
    if bad:
        raise SystemExit(f"--workloads: unknown {bad}; allowed: {', '.join(pool)}")
    systems = args.systems.split(",")
    os.makedirs(args.out, exist_ok=True)
    from onpolicy import determinism
    from onpolicy.model import CausalLM

    determinism.enable(seed=0)
    results, t_start, skipped = [], time.perf_counter(), []
    states = {}  # random N(0, 0.02) weights (seed 0, on the CPU), one set per workload, shared by the systems
    for system in systems:  # system-major: every invariant measurement first (the time budget cuts the rest)
        for name in names:
            late = args.time_budget is not None and time.perf_counter() - t_start > args.time_budget
            if late and system != "trl":  # the recorded TRL figures cost nothing
                skipped.append(f"{name}/{system}")
                continue
            work = pool[name]
            if system != "trl" and name not in states:
                states[name] = CausalLM(model_config(work[0])).state_dict()
            row = trl_row(name) if system == "trl" else \
                bench_onpolicy(name, work, states[name], system == "invariant", args)
            if row is not None:
                results.append(row)
            write_json(args, results, skipped)
    results.sort(key=lambda r: names.index(r["workload"]))
    write_json(args, results, skipped)
    print(table(results))
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    bad_kl = [r for r in results if r["system"] == "invariant" and any(k != 0.0 for k in r["kl"])]
    plot(results, os.path.join(args.out, "bench_rl.png"))
    if bad_kl:
        print(f"FAIL: invariant onpolicy/kl != 0.0 in {[r['workload'] for r in bad_kl]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
