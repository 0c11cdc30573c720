"""Build everything one RL run needs from an ExperimentConfig: model, tokenizer, data, SFT warm-start,
reference model, optimizer (fp32 masters), engine (KV cache sized next to the trainer), logger, and the resumed state.

Order matters for clear errors: the config is validated at construction, rewards and data are checked before
any model is built, and every check runs before compute. The SFT warm-start runs (or loads from its cache)
before a resume so that a frozen reference model (beta > 0) is the same post-SFT model in both.
Several processes (`accelerate launch`): `Run.dist` says which rank this is; rank 0 runs the SFT warm start
first, writes checkpoints and logs. Under FSDP2 (`Run.dist.fsdp`) the trainer runs `Run.train_model` (the
sharded fp32 masters, onpolicy.trainer.fsdp) and `Run.model` is the engine's full copy.
Left out: LoRA, optimizer choices other than AdamW.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

SFT_BATCH_SIZE = 64


@dataclass
class Run:
    cfg: Any
    device: torch.device
    model: torch.nn.Module
    tokenizer: Any
    llm: Any
    optimizer: Any                    # onpolicy.trainer.precision.MasterWeightAdamW
    params: list
    ref_model: torch.nn.Module | None
    prompts: Any                      # onpolicy.data.PromptIterator
    encode: Callable[[str], list[int]]
    logger: Any
    start_step: int
    setup_time: float
    sft_stats: dict
    dist: Any = None                  # onpolicy.trainer.distributed.Dist (rank, world size, fsdp)
    threads: Any = None               # onpolicy.trainer.cpu_threads.CpuThreads
    train_model: Any = None           # the module the trainer's forward runs under FSDP2; None: `model`
    rewards: list | None = None       # resolved rewards (onpolicy.rewards.sources.Reward); None: cfg.rewards
    eval_rows: list | None = None     # held-out problems of trainer.eval_every (onpolicy.eval_run); None: off
    env: Any = None                   # onpolicy.envs.source.EnvSource when env.name is set: multi-turn rollouts


def trainer_module(run) -> torch.nn.Module:
    """The module the trainer's forward and backward run: the FSDP2-sharded masters, or the model itself."""
    return getattr(run, "train_model", None) or run.model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device: 'cuda' requested but CUDA is not available; allowed here: auto, cpu")
    return torch.device(name)


def check_model_path(cfg) -> None:
    if cfg.model.path == "tiny":
        return
    if cfg.model.tiny:
        raise ValueError("model.tiny: overrides only apply with model.path: tiny; allowed here: {}")
    if not os.path.isdir(cfg.model.path):
        raise ValueError(f"model.path: {cfg.model.path!r} is not a directory; allowed: 'tiny' or a local HF model dir")


def build_tokenizer(cfg):
    """The tokenizer alone (cheap), so data can be checked before any model is built."""
    check_model_path(cfg)
    if cfg.model.path == "tiny":
        from onpolicy.model.tiny import TINY_CHAT_TEMPLATE, CharTokenizer, tiny_chars

        return CharTokenizer(tiny_chars(cfg.model.tiny.get("vocab_size")), chat_template=TINY_CHAT_TEMPLATE)
    from onpolicy.model import load_tokenizer

    return load_tokenizer(cfg.model.path)


def check_stop_strings(cfg, tokenizer) -> None:
    """Refuse a `sampling.stop` string the engine could not match (onpolicy.engine.stopping); needs the tokenizer
    only, so it runs before any model is built."""
    from onpolicy.engine import SamplingParams
    from onpolicy.engine.stopping import special_tokens, stop_rule

    stop_rule(SamplingParams(stop=list(cfg.sampling.stop) or None), [], special_tokens(tokenizer), "sampling")


def attach_generation_settings(model, tokenizer, log=print) -> None:
    """`model.generation_settings` (generation_config.json and config.json's token ids, read by load_pretrained)
    completed from the tokenizer -- the tiny model gets its bos/eos/pad -- so the engine stops on every eos id
    and saved policies carry them; logs what the checkpoint's generation config says."""
    from onpolicy.model.generation_config import GenerationSettings

    settings = getattr(model, "generation_settings", None) or GenerationSettings()
    model.generation_settings = settings.complete_from_tokenizer(tokenizer)
    log(model.generation_settings.describe(tokenizer))


def warn_unknown_chars(cfg, rows: list[dict], log) -> None:
    """With the tiny model: one warning when prompts or answers hold characters its tokenizer maps to <unk>."""
    if cfg.model.path != "tiny":
        return
    from onpolicy.model.tiny import tiny_chars, unknown_chars_warning

    columns = {"prompt": [r["prompt"] for r in rows], "answer": [r.get("answer") or "" for r in rows]}
    message = unknown_chars_warning(columns, tiny_chars(cfg.model.tiny.get("vocab_size")))
    if message:
        log(f"warning: {message}")


def build_model(cfg, device: torch.device, seed: int):
    """The policy: the built-in tiny model ("tiny", weights from `seed`) or a local HF directory."""
    check_model_path(cfg)
    if cfg.model.path == "tiny":
        from onpolicy.model.tiny import build_tiny

        if "dtype" in cfg.model.tiny:
            raise ValueError("model.tiny.dtype: set the dtype with model.dtype (float32 | bfloat16) instead")
        model, _ = build_tiny(seed=seed, dtype=cfg.model.dtype, **cfg.model.tiny)
        return model.to(device)
    from onpolicy.model import load_pretrained

    model, _ = load_pretrained(cfg.model.path, dtype=cfg.model.dtype, device=device)
    return model


def save_checkpoint(run: Run, step: int) -> str:
    """Save after `step` completed steps; the prompt iterator's position and the config travel with it.
    Rank 0 writes (every rank holds the same weights and optimizer state); the others wait for it. Out of disk
    space: `run_dir.DiskFull` naming the checkpoint directory."""
    from onpolicy.trainer import checkpoint
    from onpolicy.trainer.run_dir import disk_full

    root = checkpoint.checkpoint_root(run.cfg)
    try:
        return _save(run, root, step)
    except Exception as e:
        full = disk_full(e, root / f"step-{step}")
        if full is None:
            raise
        raise full from e


def _save(run: Run, root, step: int) -> str:
    from onpolicy.trainer import checkpoint

    if run.dist is not None and run.dist.fsdp:
        from onpolicy.trainer.fsdp import save_fsdp_checkpoint

        return save_fsdp_checkpoint(run, root, step)
    if run.dist is None or run.dist.is_main:
        world = {"world_size": run.dist.world_size} if run.dist is not None else {}
        only = {"model_only": True} if run.cfg.trainer.save_only_model else {}
        checkpoint.save_checkpoint(root, step=step, model=run.model,
                                   optimizer=None if only else run.optimizer,
                                   tokenizer=run.tokenizer, extra={"prompts": run.prompts.state_dict()},
                                   keep=run.cfg.trainer.keep_checkpoints,
                                   meta={"config": run.cfg.to_dict(), **world, **only})
    if run.dist is not None:
        run.dist.barrier()
    return str(root / f"step-{step}")


def run_sft(cfg, model, tokenizer, rows, encode, log, on_step=None, show_progress: bool = True) -> dict:
    """The SFT warm-start (trainer.sft_warmup_steps), with a progress bar (`show_progress` and
    logging.progress_bar, on a terminal); `on_step()` runs after each step."""
    t = cfg.trainer
    if t.sft_warmup_steps == 0:
        return {}
    from onpolicy.trainer.sft import sft_warmup

    if any(r.get("answer") is None for r in rows):
        raise ValueError("trainer.sft_warmup_steps > 0 needs an answer for every prompt (data.answer_column); "
                         "allowed without answers: sft_warmup_steps: 0")
    eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    from onpolicy.chat import encode_prompt

    prompts = [encode_prompt(tokenizer, r) for r in rows]
    completions = [encode(r["answer"]) + eos for r in rows]
    cache = t.sft_cache_dir or os.path.join(cfg.logging.output_dir, "cache")
    from onpolicy import kernels

    # Always the invariant kernels: the warm start (and its cache) must not depend on trainer.invariant, so
    # an invariant and a comparison run start from the same weights whichever ran first.
    from onpolicy.logging import beside_bar, progress_bar

    bar = progress_bar(t.sft_warmup_steps, "sft warm-up", show_progress and cfg.logging.progress_bar
                       and "console" in cfg.logging.report_to)

    def step_done():
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            on_step()

    try:
        with kernels.invariant_mode(True):
            return sft_warmup(model, prompts, completions, steps=t.sft_warmup_steps, lr=t.sft_lr,
                              batch_size=SFT_BATCH_SIZE, seed=t.seed, cache_dir=cache, log=beside_bar(log, bar),
                              on_step=step_done)
    finally:
        if bar is not None:
            bar.close()


def build_sampler(cfg, model, tokenizer, device: torch.device, world_size: int = 1, sharded: bool = False):
    """The rollout engine `engine.backend` names: onpolicy's LLM (its KV cache sized for this rank's share of the
    prompts beside the trainer's needs, `memory.kv_cache_blocks`; `sharded`: FSDP2), or vLLM on the same model (a weight copy;
    vLLM sizes its own cache)."""
    if cfg.engine.backend == "vllm":
        from onpolicy.engine.vllm_backend import VllmLLM

        return VllmLLM(model, tokenizer, cfg.engine, seed=cfg.trainer.seed)
    from onpolicy.engine import LLM
    from onpolicy.trainer.memory import kv_cache_blocks

    engine = dataclasses.replace(cfg.engine, num_blocks=kv_cache_blocks(cfg, model, device, world_size=world_size,
                                                                        sharded=sharded))
    return LLM(model, tokenizer, engine, seed=cfg.trainer.seed)


def check_before_compute(cfg, dist, log=print) -> None:
    """The run-level checks that need no model: context budget, resume path, world size, backend (the rewards are
    resolved just before, in `build_run`)."""
    from onpolicy.config import check_context
    from onpolicy.trainer.distributed import check_world_size
    from onpolicy.trainer.resume import check_resume_config

    check_context(cfg)
    if cfg.trainer.eval_every:
        from onpolicy.evaluation import check_eval_config

        check_eval_config(cfg)
    resume = cfg.trainer.resume
    if isinstance(resume, str) and not os.path.exists(resume):
        raise ValueError(f"trainer.resume: checkpoint path {resume!r} does not exist; allowed: false, true, a path")
    check_world_size(cfg, dist.world_size)
    check_resume_config(cfg, log, dist)
    if cfg.engine.backend == "vllm":
        from onpolicy.engine.vllm_backend import check_available

        check_available()


def build_optimizer(t, model, params, device, dist):
    """(optimizer, train_model): fp32-master AdamW on the replicated model, or under FSDP2 a sharded fp32
    trainer module (train_model) with its sharded AdamW; train_model is None when the trainer runs `model`."""
    adamw = dict(lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    if dist.fsdp:
        from onpolicy.trainer.fsdp import ShardedAdamW, shard_trainer

        train_model = shard_trainer(model, device)
        return ShardedAdamW(train_model, model, **adamw), train_model
    from onpolicy.trainer.precision import MasterWeightAdamW

    return MasterWeightAdamW(params, **adamw), None


def load_reward_models(rewards: list, device: torch.device, log=print) -> None:
    """Load the weights of every reward model among the resolved `rewards` onto `device` (before compute)."""
    from onpolicy.rewards.reward_model import RewardModel

    for r in rewards:
        if isinstance(r.fn, RewardModel):
            r.fn.to(device).load()
            log(f"reward {r.label!r}: reward model {r.fn.path} scored on {r.fn.backend}")


def build_run(cfg, log=print, rewards=None) -> Run:
    """Everything one run needs; `rewards`: resolved rewards to use instead of `cfg.rewards`."""
    from onpolicy import determinism
    from onpolicy.data import PromptIterator, load_prompts
    from onpolicy.eval_run import load_eval_rows
    from onpolicy.logging import RunLogger
    from onpolicy.rewards.sources import resolve_rewards
    from onpolicy.trainer.cpu_threads import CpuThreads
    from onpolicy.trainer.distributed import Dist
    from onpolicy.trainer.resume import resume_run, trim_metrics

    t0 = time.perf_counter()
    t = cfg.trainer
    dist = Dist.current()
    rewards = resolve_rewards(cfg.rewards if rewards is None else rewards)
    check_before_compute(cfg, dist, log)
    device = resolve_device(cfg.model.device)
    determinism.enable(seed=t.seed, cpu_threads=t.num_threads if isinstance(t.num_threads, int) else -1)
    threads = CpuThreads(t.num_threads, device)
    load_reward_models(rewards, device, log)
    tokenizer = build_tokenizer(cfg)
    check_stop_strings(cfg, tokenizer)
    env = None
    if cfg.env.name is not None:
        from onpolicy.envs.source import EnvSource

        env = EnvSource(cfg, tokenizer, log)
    rows = load_prompts(cfg.data, tokenizer)
    warn_unknown_chars(cfg, rows, log)
    eval_rows = load_eval_rows(cfg, tokenizer, rows) if t.eval_every else None
    model = build_model(cfg, device, t.seed)
    attach_generation_settings(model, tokenizer, log)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    if not dist.is_main:  # rank 0 runs the warm start (or loads its cache) first; the others load its cache
        dist.barrier()
    sft_stats = run_sft(cfg, model, tokenizer, rows, encode, log, on_step=threads.update, show_progress=dist.is_main)
    if dist.is_main:
        dist.barrier()
    ref_model = None
    if t.beta > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    model.activation_checkpointing = t.activation_checkpointing
    optimizer, train_model = build_optimizer(t, model, params, device, dist)
    llm = build_sampler(cfg, model, tokenizer, device, dist.world_size, sharded=dist.fsdp)
    prompts = PromptIterator(rows, t.prompts_per_step, seed=cfg.data.shuffle_seed)
    run = Run(cfg=cfg, device=device, model=model, tokenizer=tokenizer, llm=llm, optimizer=optimizer,
              params=params, ref_model=ref_model, prompts=prompts, encode=encode, logger=None, start_step=0,
              setup_time=0.0, sft_stats=sft_stats, dist=dist, train_model=train_model,
              threads=threads, rewards=rewards, eval_rows=eval_rows, env=env)
    if t.resume is not False:
        run.start_step = resume_run(run)
        if run.start_step:
            log(f"resumed after step {run.start_step}")
    if dist.is_main:  # console, metrics.jsonl and W&B from rank 0 only
        trim_metrics(cfg, run.start_step, log)
    run.logger = RunLogger(cfg, enabled=dist.is_main, start_step=run.start_step)
    threads.update()  # the first decision, from the load seen during set-up
    run.setup_time = time.perf_counter() - t0
    return run
