"""bench_rl: seconds per RL step (sample / train) and peak GPU memory per phase, onpolicy vs TRL.

Default (H100): random bf16 weights of Qwen3-0.6B's shape at 16 prompts x 8 samples x 256 tokens and 32x8x512
(10-token random prompts), the shipped configs/qwen3-0.6b-gsm8k.yaml's shape (32x8x512 with 512-token random
prompts, that config's engine and trainer settings), and Qwen3-1.7B's shape at 32x8x1024; completions of exactly
the given length (ignore_eos), temperature 1.0, random rewards (seeded). A step is `onpolicy.trainer`'s own:
engine generate -> ScoredBatch -> `update_policy` (micro-batches of `trainer.micro_batch_tokens`, activation
checkpointing, fp32 masters; the KV cache sized by `trainer.memory.kv_cache_blocks`). Systems: onpolicy
invariant (Triton batch-invariant kernels, CUDA graphs), onpolicy `invariant: false` (torch's default ops:
cuBLAS, flash varlen training attention, chunked-vocab logprobs; the engine eager), and TRL's `GRPOTrainer` (HF
generate) run live on the same weights, prompts and sampling (scripts/bench_rl_trl.py says how); without trl
the figures recorded on an H100 80GB (TRL 1.16, 2026-11-24) stand in (marked "recorded") and a note is printed.
Long-context workloads, run only when named: `0.6b-8x8x8192`, `0.6b-8x8x16384` (8 prompts x 8 samples; the
16k one 32 sequences at a time in the engine so its KV cache fits beside the trainer) and `0.6b-2x8x16384` (as
much KV read while sampling as the 8k one); Qwen3's 40,960 positions, warm-up steps on 1,024-token completions,
every 16k sequence longer than a micro-batch; TRL is skipped on them with a note (HF generate would run for
hours). Each system gets `--warmup` untimed steps (Triton compile, graph capture) then `--steps` timed ones; the
invariant system also checks onpolicy/kl == 0.0 every step.
Writes bench_rl.json (after every measurement) and bench_rl.png to --out; prints the table with ratios.
`--workloads` / `--systems` pick a part (to split a long run); `--merge a.json b.json` joins parts into one
table, JSON and PNG without measuring. `--quick`: the tiny model on CPU, 2x4x8, one timed step per system (a
smoke run, not a measurement). LoRA: `--lora R` measures each onpolicy system twice on the same weights: its
baseline without adapters (base frozen, only the input embeddings train: the same sampling and the same
activation backward through every layer, without the adapter GEMMs; system `invariant`), then rank-R adapters
(alpha 2R) on every linear layer with the base frozen (system `invariant+loraR`), so the table's "time vs
invariant" is the adapters' cost (`--workloads 8b-16x8x512`: Qwen3-8B's shape). The workloads and the
onpolicy system built for each live in scripts/rl_workloads.py (scripts/profile_trainer.py profiles the same).
Left out: real data and rewards, multi-GPU, sequence packing across steps, TRL's vLLM backend.
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import torch

from scripts import bench_rl_report as report
from scripts import bench_rl_trl
from scripts.common import default_device, device_name
from scripts.rl_workloads import (QUICK_WORKLOADS, WORKLOADS, Workload, build_system, model_config,  # noqa: F401
                                  DEFAULT_WORKLOADS, prompt_ids, rollout, run_config, scored_batch,
                                  workload_model_config, check_selection)

GIB = float(1 << 30)
# TRL 1.16 GRPOTrainer (HF generate) on an H100 80GB, 2026-11-24: (s/step, peak GiB); used without trl.
TRL_RECORDED = {"0.6b-16x8x256": (12.0, 8.5), "0.6b-32x8x512": (22.3, 22.4)}
# Workloads TRL is not run on, and why (printed as a note; the row is left out).
TRL_SKIPPED = {name: f"HF generate of {w.prompts * w.generations} x {w.length:,} tokens (32x8x512 took 26 s) "
               f"would run for hours, past any one device call" for name, w in WORKLOADS.items()
               if name not in DEFAULT_WORKLOADS}
SYSTEMS = report.SYSTEMS


def bench_onpolicy(name, work, state, invariant: bool, args):
    """Warm-up + timed steps of one onpolicy system; -> a result row (means over the timed steps)."""
    from onpolicy import kernels
    from onpolicy.trainer.memory import PhasePeak

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    warmup, steps = (args.warmup, args.steps) if invariant else (args.default_warmup, args.default_steps)
    resident = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None  # others' leftovers
    with kernels.invariant_mode(invariant):
        built = build_system(work, state, invariant, args, trainable_params)
        cfg, vocab = built.cfg, built.model.config.vocab_size
        peak, rows = PhasePeak(device), []
        for step in range(warmup + steps):
            length = work.warmup_length if step < warmup else None
            peak.start()
            t0 = time.perf_counter()
            with torch.no_grad():
                ro = rollout(built.llm, work, step, vocab, length)
            sync(device)
            t_sample, sample_peak = time.perf_counter() - t0, peak.gib()
            peak.start()
            t1 = time.perf_counter()
            m = built.trainer.update(scored_batch(ro, step), step)
            sync(device)
            rows.append({"sample_s": t_sample, "train_s": time.perf_counter() - t1, "sample_peak_gib": sample_peak,
                         "train_peak_gib": peak.gib(), "kl": m["onpolicy/kl"], "tokens": ro.num_tokens})
            print(f"  {name} {'invariant' if invariant else 'default'} step {step}: {rows[-1]}", flush=True)
    num_blocks = built.num_blocks
    del built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timed = rows[warmup:]
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    peaks = [r[k] for r in rows for k in ("sample_peak_gib", "train_peak_gib") if r[k] is not None]
    system = ("invariant" if invariant else "default") + (f"+lora{args.lora}" if args.lora else "")
    return {"workload": name, "system": system, "sample_s": mean("sample_s"),
            "train_s": mean("train_s"), "step_s": mean("sample_s") + mean("train_s"),
            "sample_peak_gib": max((r["sample_peak_gib"] or 0.0) for r in rows) if peaks else None,
            "train_peak_gib": max((r["train_peak_gib"] or 0.0) for r in rows) if peaks else None,
            "peak_gib": max(peaks) if peaks else None, "kl": [r["kl"] for r in rows], "kv_blocks": num_blocks,
            "micro_batch_tokens": cfg.trainer.micro_batch_tokens, "resident_before_gib": resident,
            "tokens_per_step": timed[0]["tokens"], "lora": args.lora, "frozen_base": args.frozen_base}


def trainable_params(model, args) -> list:
    """(name, parameter) pairs the optimizer trains: every weight; `args.lora` R: rank-R adapters on every linear
    layer (alpha 2R, base frozen); `args.frozen_base`: the input embeddings only (the LoRA step's baseline)."""
    from onpolicy.trainer import FullFineTuning

    if args.lora:
        from onpolicy.lora import LoraArgs
        from onpolicy.lora.training import LoraAdapters

        return LoraAdapters(LoraArgs(r=args.lora, alpha=2.0 * args.lora), seed=0).select(model)
    if args.frozen_base:
        model.requires_grad_(False)
        model.model.embed_tokens.weight.requires_grad_(True)
    return FullFineTuning().select(model)


def trl_row(name, work: Workload, state, args):
    """TRL's GRPOTrainer live on the same weights and prompts when trl imports; else `TRL_RECORDED` (None for a
    workload without them), with a note. None, with a note, for a workload in `TRL_SKIPPED`."""
    if name in TRL_SKIPPED:
        print(f"  {name} trl: skipped: {TRL_SKIPPED[name]}", flush=True)
        return None
    if bench_rl_trl.available():
        from onpolicy.model import CausalLM

        model = CausalLM(workload_model_config(work), init=False)
        model.load_state_dict(state)
        bench = {"micro_batch_tokens": run_config(work, True, args).trainer.micro_batch_tokens, "lr": 1e-6,
                 "checkpointing": not args.no_checkpointing}
        return bench_rl_trl.bench_trl(name, work, model, lambda step: prompt_ids(work, step, model.config.vocab_size),
                                      bench, args)
    print(f"  {name} trl: trl is not importable here; using the TRL figures recorded on an H100 (TRL_RECORDED)"
          + ("" if name in TRL_RECORDED else " (none for this workload)"), flush=True)
    if name not in TRL_RECORDED:
        return None
    s, gib = TRL_RECORDED[name]
    return {"workload": name, "system": "trl", "recorded": True, "step_s": s, "peak_gib": gib}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/bench_rl")
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, 2x4x8 (smoke run)")
    ap.add_argument("--workloads", default=None, help=f"comma separated subset of {', '.join(WORKLOADS)} (default: "
                    f"{', '.join(DEFAULT_WORKLOADS)})")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per system (default 2; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per system (default 1; quick 0)")
    ap.add_argument("--default-steps", type=int, default=None, help="timed steps of invariant: false (default --steps)")
    ap.add_argument("--default-warmup", type=int, default=None, help="its untimed steps (default --warmup)")
    ap.add_argument("--micro-batch-tokens", type=int, default=None,
                    help="trainer.micro_batch_tokens (default: 16384, or the workload's shipped config's)")
    ap.add_argument("--no-checkpointing", action="store_true", help="trainer.activation_checkpointing: false")
    ap.add_argument("--lora", type=int, default=0, metavar="R",
                    help="rank-R LoRA adapters on every linear layer (base frozen), each system measured after its "
                         "baseline without adapters (base frozen, input embeddings train); 0 = off")
    ap.add_argument("--time-budget", type=float, default=None, help="skip measurements that start after N s")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="join these bench_rl.json files into one table / JSON / PNG in --out (no measuring)")
    args = ap.parse_args(argv)
    if args.lora < 0:
        raise SystemExit(f"--lora: got {args.lora}; allowed: an int >= 0 (0 = off)")
    args.frozen_base = False
    args.device = default_device(args.quick)
    args.steps = args.steps if args.steps is not None else (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.default_steps = args.steps if args.default_steps is None else args.default_steps
    args.default_warmup = args.warmup if args.default_warmup is None else args.default_warmup
    args.pool = QUICK_WORKLOADS if args.quick else WORKLOADS
    args.names = args.workloads.split(",") if args.workloads else list(QUICK_WORKLOADS if args.quick
                                                                         else DEFAULT_WORKLOADS)
    args.system_list = args.systems.split(",")
    check_selection(args.names, args.pool, args.system_list, SYSTEMS)
    return args


def meta(args, skipped) -> dict:
    return {"device": device_name(args.device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "steps": args.steps, "warmup": args.warmup, "default_steps": args.default_steps,
            "default_warmup": args.default_warmup, "micro_batch_tokens": args.micro_batch_tokens,
            "checkpointing": not args.no_checkpointing, "lora": args.lora,
            "trl_live": bench_rl_trl.available(), "skipped": skipped,
            "trl_skipped": {n: TRL_SKIPPED[n] for n in args.names if n in TRL_SKIPPED and "trl" in args.system_list}}


def lora_variants(args) -> list:
    """The argument sets one onpolicy system runs under: `args`; with `--lora R`, first its baseline without
    adapters (`frozen_base`), then `args`."""
    if not args.lora:
        return [args]
    return [argparse.Namespace(**{**vars(args), "lora": 0, "frozen_base": True}), args]


def measure(args) -> tuple[list, list]:
    """Every selected (system, workload), system-major; the JSON rewritten after each measurement."""
    from onpolicy import determinism
    from onpolicy.model import CausalLM

    determinism.enable(seed=0)
    results, t_start, skipped = [], time.perf_counter(), []
    states = {}  # random N(0, 0.02) weights (seed 0, on the CPU), one set per workload, shared by the systems
    live_trl = bench_rl_trl.available()
    for system in args.system_list:  # system-major: every invariant measurement first (the budget cuts the rest)
        for name in args.names:
            late = args.time_budget is not None and time.perf_counter() - t_start > args.time_budget
            if late and (system != "trl" or live_trl):  # the recorded TRL figures cost nothing
                skipped.append(f"{name}/{system}")
                continue
            work = args.pool[name]
            needs_weights = system != "trl" or (live_trl and name not in TRL_SKIPPED)
            if needs_weights and name not in states:
                states[name] = CausalLM(workload_model_config(work)).state_dict()
            if system == "trl":
                rows = [trl_row(name, work, states.get(name), args)]
            else:
                rows = [bench_onpolicy(name, work, states[name], system == "invariant", variant)
                        for variant in lora_variants(args)]
            results.extend(row for row in rows if row is not None)
            report.write_json(os.path.join(args.out, "bench_rl.json"), meta(args, skipped), results)
    results.sort(key=lambda r: args.names.index(r["workload"]))
    return results, skipped


def main(argv=None) -> int:
    args = parse(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        info, results = report.merge(args.merge)
        skipped = [s for m in info["merged"] for s in m.get("skipped", [])]
    else:
        results, skipped = measure(args)
        info = meta(args, skipped)
    report.write_json(os.path.join(args.out, "bench_rl.json"), info, results)
    print(report.table(results))
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    report.plot(results, os.path.join(args.out, "bench_rl.png"), report.title(info))
    bad_kl = [r for r in results if r["system"].startswith("invariant") and any(k != 0.0 for k in r["kl"])]
    if bad_kl:
        print(f"FAIL: invariant onpolicy/kl != 0.0 in {[r['workload'] for r in bad_kl]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
