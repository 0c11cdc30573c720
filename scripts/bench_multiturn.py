"""bench_multiturn: tokens/s of a multi-turn rollout step vs a single-turn step that generates as many tokens.

Default (H100): Qwen3-0.6B shape, random bf16 weights, invariant kernels, the calculator environment with a
nudge (every turn without a tool call gets a user reply, so trajectories run `--turns` turns), 16 prompts x 4
samples = 64 trajectories, `--turn-tokens` 64 new tokens per turn (eos ignored, so turns have equal length).
The single-turn step samples the same 64 opening prompts once with max_tokens = the multi-turn step's model
tokens per trajectory. Both phases are timed: the rollout (engine; the multi-turn one includes the environment
calls, the chat-template deltas and each turn's prefill of the newest observation, mostly served from the prefix
cache) and the trainer's packed forward over the whole batch (no backward), which checks parity: every model
token's logprob torch.equal to the sampler's. Prints tok/s of each and the ratios (multi / single); writes
bench_multiturn.json to --out. Run as `python -m scripts.bench_multiturn`. `--quick`: the tiny model on CPU,
4 x 2 trajectories of 3 turns of 6 tokens (a smoke run, not a measurement). Left out: the backward and optimizer step (the same work per token in both).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from scripts.common import device_name, sync


def build(quick: bool):
    """(model, tokenizer, device): the tiny model on CPU, or the Qwen3-0.6B shape in bf16 on CUDA."""
    from onpolicy.model import CausalLM
    from onpolicy.model.tiny import TINY_CHAT_TEMPLATE, CharTokenizer, build_tiny, qwen3_0_6b_config, tiny_chars

    if quick:
        model, _ = build_tiny(seed=0, num_hidden_layers=1, max_position_embeddings=256)
        return model.eval(), CharTokenizer(chat_template=TINY_CHAT_TEMPLATE), torch.device("cpu")
    device = torch.device("cuda")
    model = CausalLM(qwen3_0_6b_config(max_position_embeddings=2048)).to(device).eval()
    tok = CharTokenizer(tiny_chars(model.config.vocab_size), chat_template=TINY_CHAT_TEMPLATE)
    return model, tok, device


def multi_turn(llm, tok, rows, args, step: int):
    from onpolicy.config import SamplingArgs
    from onpolicy.envs.calculator import Calculator
    from onpolicy.envs.config import EnvArgs
    from onpolicy.envs.rollout import generate_trajectories

    def make_env():
        return Calculator(system_prompt="Use the calculator tool.", nudge="Use the calculator tool.")

    env = EnvArgs(name="calculator", max_turns=args.turns, max_total_tokens=args.turns * (args.turn_tokens + 32))
    sampling = SamplingArgs(num_generations=args.samples, max_tokens=args.turn_tokens, stop_token_ids=[])
    return generate_trajectories(llm, tok, rows, make_env, sampling, env, run_seed=0, step=step)


def single_turn(llm, prompts: list[list[int]], tokens_each: int, step: int):
    params = [SamplingParams(temperature=1.0, max_tokens=tokens_each, seed=step * 1000 + i, ignore_eos=True)
              for i in range(len(prompts))]
    outs = llm.generate(prompts, params)
    return [o.outputs[0] for o in outs]


def trainer_forward(model, prompts, completions, masks, sampler) -> None:
    from onpolicy.model import sequence_logprobs

    lps = sequence_logprobs(model, prompts, completions, 1.0, score_masks=masks)
    bad = sum(not torch.equal(a.cpu(), b) for a, b in zip(lps, sampler))
    if bad:
        raise SystemExit(f"parity broken: {bad}/{len(lps)} sequences differ")


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def one_round(model, llm, tok, rows, args, device, step: int) -> dict:
    """One multi-turn step and one single-turn step with the same generated tokens; -> seconds and tokens."""
    llm.reset_prefix_cache()
    ro, t_mt = timed(lambda: multi_turn(llm, tok, rows, args, step), device)
    model_tokens = sum(ro.seq_lens)
    _, f_mt = timed(lambda: trainer_forward(model, ro.prompt_ids, ro.completion_ids, ro.score_masks,
                                            ro.sampler_logprobs), device)
    each = max(1, round(model_tokens / len(ro.prompt_ids)))
    llm.reset_prefix_cache()
    comps, t_st = timed(lambda: single_turn(llm, ro.prompt_ids, each, step), device)
    _, f_st = timed(lambda: trainer_forward(model, ro.prompt_ids, [c.token_ids for c in comps], None,
                                            [c.logprobs for c in comps]), device)
    return {"multi_rollout_s": t_mt, "multi_forward_s": f_mt, "multi_tokens": model_tokens,
            "multi_all_tokens": sum(len(c) for c in ro.completion_ids),
            "turns_mean": sum(ro.num_turns) / len(ro.num_turns),
            "single_rollout_s": t_st, "single_forward_s": f_st, "single_tokens": sum(len(c.token_ids) for c in comps)}


def summarize(rounds: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out = {"multi_rollout_tok_s": med["multi_tokens"] / med["multi_rollout_s"],
           "single_rollout_tok_s": med["single_tokens"] / med["single_rollout_s"],
           "multi_forward_tok_s": med["multi_tokens"] / med["multi_forward_s"],
           "single_forward_tok_s": med["single_tokens"] / med["single_forward_s"], **med}
    out["rollout_ratio"] = out["multi_rollout_tok_s"] / out["single_rollout_tok_s"]
    out["forward_ratio"] = out["multi_forward_tok_s"] / out["single_forward_tok_s"]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model on CPU (a smoke run)")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--turns", type=int, default=None)
    p.add_argument("--turn-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="outputs/bench_multiturn")
    args = p.parse_args(argv)
    for name, quick, full in (("prompts", 4, 16), ("samples", 2, 4), ("turns", 3, 4), ("turn_tokens", 6, 64)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    from onpolicy.tasks import make_examples

    model, tok, device = build(args.quick)
    llm = LLM(model, tok, EngineConfig(num_blocks=None if args.quick else 4096, max_num_batched_tokens=4096))
    llm.eos_token_id = None  # equal-length turns: eos ignored, as the single-turn step's ignore_eos
    rows = make_examples("arith", args.prompts, seed=0)
    with kernels.invariant_mode(True), torch.no_grad():
        one_round(model, llm, tok, rows, args, device, step=0)  # warm-up: Triton compile, CUDA-graph capture
        rounds = [one_round(model, llm, tok, rows, args, device, step=1 + r) for r in range(args.repeats)]
    result = {"device": device_name(device.type), **vars(args),
              **summarize(rounds)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_multiturn.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{result['device']}: {len(rows) * args.samples} trajectories, {result['turns_mean']:.2f} turns, "
          f"{result['multi_tokens']:.0f} model tokens (+{result['multi_all_tokens'] - result['multi_tokens']:.0f} "
          f"observation tokens); parity exact in both")
    print(f"rollout  tok/s: multi-turn {result['multi_rollout_tok_s']:,.0f}  single-turn "
          f"{result['single_rollout_tok_s']:,.0f}  ratio {result['rollout_ratio']:.2f}")
    print(f"trainer forward tok/s: multi-turn {result['multi_forward_tok_s']:,.0f}  single-turn "
          f"{result['single_forward_tok_s']:,.0f}  ratio {result['forward_ratio']:.2f}")
    return result


if __name__ == "__main__":
    main()
