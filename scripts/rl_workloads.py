"""The RL workloads of scripts/bench_rl.py and scripts/profile_trainer.py: the table, each one's model and
config, its random prompts, rollouts and scored batches, and the onpolicy system (model, optimizer, engine,
Trainer) built for one -- so both scripts measure the same step.

A workload is Qwen3's shape with random bf16 weights, `prompts` x `generations` completions of exactly `length`
tokens after `prompt_len`-token random prompts, on configs/tiny-cpu.yaml plus `SYNTHETIC` (or a shipped config's
own settings). Long-context workloads take Qwen3's own 40,960 positions, may cap the sequences the engine runs at
once (`engine_seqs`: the KV cache of all of them would not fit next to the trainer) and warm up on shorter
completions (`warmup_length`: compile and graph capture without a full long step). Left out: real data, rewards.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The synthetic workloads' settings on top of configs/tiny-cpu.yaml (a workload on a shipped config keeps its own).
SYNTHETIC = {"engine.max_num_batched_tokens": 16384, "trainer.micro_batch_tokens": 16384,
             "trainer.activation_checkpointing": True}
SHORT_POSITIONS, QWEN3_POSITIONS = 2048, 40960  # max_position_embeddings: short workloads, Qwen3's own


class Workload(NamedTuple):
    shape: str  # "tiny", "0.6b", "1.7b" or "8b"
    prompts: int
    generations: int
    length: int  # completion tokens, exactly
    prompt_len: int = 10
    config: str = "tiny-cpu.yaml"  # base config under configs/ (SYNTHETIC applies on tiny-cpu.yaml)
    engine_seqs: int | None = None  # engine.max_num_seqs (None: every sequence of the step at once)
    warmup_length: int | None = None  # completion tokens of the untimed warm-up steps (None: `length`)

    @property
    def max_positions(self) -> int:
        """The model's max_position_embeddings: 2,048 where every sequence fits, else Qwen3's 40,960."""
        return SHORT_POSITIONS if self.prompt_len + self.length + 1 <= SHORT_POSITIONS else QWEN3_POSITIONS


WORKLOADS = {"0.6b-16x8x256": Workload("0.6b", 16, 8, 256), "0.6b-32x8x512": Workload("0.6b", 32, 8, 512),
             "0.6b-gsm8k": Workload("0.6b", 32, 8, 512, 512, "qwen3-0.6b-gsm8k.yaml"),
             "1.7b-32x8x1024": Workload("1.7b", 32, 8, 1024),
             "8b-16x8x512": Workload("8b", 16, 8, 512), "8b-32x8x1024": Workload("8b", 32, 8, 1024),
             # 64 x 8,202 tokens of KV (57 GiB) fit beside the trainer; 64 x 16,394 (115 GiB) do not: 32 at once.
             # 2x8x16384 reads as much KV while sampling as 8x8x8192 (a quarter of 8x8x16384's sampling time)
             "0.6b-8x8x8192": Workload("0.6b", 8, 8, 8192, warmup_length=1024),
             "0.6b-8x8x16384": Workload("0.6b", 8, 8, 16384, engine_seqs=32, warmup_length=1024),
             "0.6b-2x8x16384": Workload("0.6b", 2, 8, 16384, warmup_length=1024)}
# What a run without --workloads measures: every workload but the long-context ones (minutes of sampling each)
DEFAULT_WORKLOADS = [name for name, w in WORKLOADS.items() if w.max_positions == SHORT_POSITIONS]
QUICK_WORKLOADS = {"tiny-2x4x8": Workload("tiny", 2, 4, 8)}


def check_selection(names: list[str], pool: dict, systems: list[str], allowed_systems) -> None:
    """One-line SystemExit for a --workloads name not in `pool` or a --systems name not in `allowed_systems`."""
    for flag, chosen, allowed in (("--workloads", names, list(pool)), ("--systems", systems, allowed_systems)):
        bad = [n for n in chosen if n not in allowed]
        if bad:
            raise SystemExit(f"{flag}: unknown {bad}; allowed: {', '.join(allowed)}")


def model_config(shape: str, max_positions: int = SHORT_POSITIONS):
    from onpolicy.model.tiny import qwen3_0_6b_config, tiny_config

    if shape == "tiny":
        return tiny_config(dtype="bfloat16", head_dim=64, max_position_embeddings=64)
    cfg = qwen3_0_6b_config(max_position_embeddings=max_positions)
    if shape == "8b":
        return cfg.replace(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                           tie_word_embeddings=False)
    return cfg if shape == "0.6b" else cfg.replace(hidden_size=2048, intermediate_size=6144)


def workload_model_config(work: Workload):
    return model_config(work.shape, work.max_positions)


def run_config(work: Workload, invariant: bool, args):
    """An ExperimentConfig for the trainer and KV sizing (the model is built here, not from model.path).
    `args`: device, micro_batch_tokens (None: the workload's), no_checkpointing."""
    from onpolicy.config import parse_args

    n, g = work.prompts, work.generations
    over = dict(SYNTHETIC) if work.config == "tiny-cpu.yaml" else {}
    over.update({"model.dtype": "bfloat16", "model.device": args.device, "data.max_prompt_tokens": work.prompt_len,
                 "sampling.num_generations": g, "sampling.max_tokens": work.length, "trainer.prompts_per_step": n,
                 "trainer.lr": 1e-6, "trainer.warmup_steps": 0, "trainer.invariant": invariant,
                 "trainer.strict_onpolicy": False, "engine.max_num_seqs": work.engine_seqs or n * g,
                 "engine.use_cuda_graphs": args.device == "cuda", "logging.report_to": ["console"]})
    if args.micro_batch_tokens is not None:
        over["trainer.micro_batch_tokens"] = args.micro_batch_tokens
    if args.no_checkpointing:
        over["trainer.activation_checkpointing"] = False
    argv = ["--config", os.path.join(REPO, "configs", work.config)]
    for k, v in over.items():
        argv += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return parse_args(argv)


def prompt_ids(work: Workload, step: int, vocab: int) -> list[list[int]]:
    """Step `step`'s random prompts (ids >= 4, seeded by the step): the same for every system."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(4, vocab, (work.prompts, work.prompt_len), generator=gen).tolist()


def rollout(llm, work: Workload, step: int, vocab: int, length: int | None = None):
    """Step `step`'s Rollout from the engine: `work.generations` completions of exactly `length` tokens (None:
    the workload's) per prompt, temperature 1.0, seeded per prompt."""
    from onpolicy.engine import SamplingParams
    from onpolicy.trainer.rollout import Rollout

    length = work.length if length is None else length
    prompts = prompt_ids(work, step, vocab)
    params = [SamplingParams(n=work.generations, temperature=1.0, max_tokens=length, ignore_eos=True,
                             logprobs=True, seed=step * 100003 + i) for i in range(work.prompts)]
    ro = Rollout(group_size=work.generations)
    for i, (ids, req) in enumerate(zip(prompts, llm.generate(prompts, params))):
        for comp in sorted(req.outputs, key=lambda c: c.index):
            ro.prompt_ids.append(ids)
            ro.completion_ids.append(list(comp.token_ids))
            ro.sampler_logprobs.append(comp.logprobs.float().cpu())
            ro.texts.append("")
            ro.finish_reasons.append(comp.finish_reason)
            ro.group_index.append(i)
    return ro


def scored_batch(ro, step: int):
    """A ScoredBatch of `ro` with seeded random rewards and GRPO advantages."""
    from onpolicy.trainer.advantages import group_advantages
    from onpolicy.trainer.scoring import ScoredBatch

    rewards = torch.rand(len(ro.seq_lens), generator=torch.Generator().manual_seed(step))
    return ScoredBatch(rollout=ro, rewards=rewards, advantages=group_advantages(rewards, ro.group_size, "grpo"),
                       loss_mask=torch.ones(ro.num_tokens, dtype=torch.bool),
                       truncated=torch.tensor([f == "length" for f in ro.finish_reasons]), kept_groups=len(ro.seq_lens)
                       // ro.group_size, reward_by_name={})


class OnpolicySystem(NamedTuple):
    cfg: object  # ExperimentConfig
    model: torch.nn.Module
    llm: object  # onpolicy.engine.LLM
    trainer: object  # onpolicy.trainer.Trainer
    num_blocks: int | None  # the engine's KV-cache blocks


def build_system(work: Workload, state: dict, invariant: bool, args, select_params) -> OnpolicySystem:
    """Model (loaded from `state`), optimizer over `select_params(model, args)`, engine (KV cache sized by
    `trainer.memory.kv_cache_blocks`) and Trainer of one benchmark run; call inside
    `kernels.invariant_mode(invariant)`."""
    from onpolicy.engine import LLM
    from onpolicy.model import CausalLM
    from onpolicy.trainer import Replicated, Trainer
    from onpolicy.trainer.memory import kv_cache_blocks

    device = torch.device(args.device)
    cfg = run_config(work, invariant, args)
    model = CausalLM(workload_model_config(work), init=False).to(device)
    model.load_state_dict(state)
    model.activation_checkpointing = cfg.trainer.activation_checkpointing
    strategy = Replicated()
    opt = strategy.build_optimizer(model, select_params(model, args), cfg.trainer, device)
    engine = dataclasses.replace(cfg.engine, num_blocks=kv_cache_blocks(cfg, model, device))
    llm = LLM(model, None, engine, seed=0)
    trainer = Trainer(cfg, device=device, strategy=strategy, model=model, optimizer=opt, sampler=llm)
    return OnpolicySystem(cfg, model, llm, trainer, engine.num_blocks)
