"""`build_trainer(cfg)`: the `Trainer` of one RL run from an ExperimentConfig: model, tokenizer, data (the parts
onpolicy.build makes), SFT warm-start, reference model, parallelism strategy and its optimizer (fp32 masters over
what `TrainerParts.trainable` selects), engine (KV cache sized next to the trainer), logger, and the resumed state.

Order matters for clear errors: the config is validated at construction, rewards and data are checked before
any model is built, and every check runs before compute. The SFT warm-start runs (or loads from its cache)
before a resume so that a frozen reference model (beta > 0) is the same post-SFT model in both.
Several processes (`accelerate launch`): `Trainer.dist` says which rank this is; rank 0 runs the SFT warm start
first, writes checkpoints and logs. The strategy (onpolicy.trainer.parallel) is chosen once here: replicated, or
FSDP2, whose sharded fp32 masters the trainer runs while `Trainer.model` is the engine's full copy.
Left out: optimizer choices other than AdamW.
"""
from __future__ import annotations

import copy
import os


SFT_BATCH_SIZE = 64


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


def check_before_compute(cfg, strategy, log=print) -> None:
    """The run-level checks that need no model: model path and context budget, resume path and layout, backend
    (the rewards are resolved just before, in `build_trainer`; the launch and world size were checked by
    onpolicy.trainer.launch)."""
    from onpolicy.build import check_context
    from onpolicy.lora.training import check_lora_run
    from onpolicy.trainer.resume import check_resume_config

    check_context(cfg)
    if cfg.trainer.eval_every:
        from onpolicy.evaluation import check_eval_config

        check_eval_config(cfg)
    resume = cfg.trainer.resume
    if isinstance(resume, str) and not os.path.exists(resume):
        raise ValueError(f"trainer.resume: checkpoint path {resume!r} does not exist; allowed: false, true, a path")
    check_lora_run(cfg, strategy)
    check_resume_config(cfg, strategy, log)
    if cfg.engine.backend == "vllm":
        from onpolicy.engine.vllm_backend import check_available

        check_available()


def build_trainer(cfg, log=print, rewards=None, parts=None):
    """The Trainer of one run; `rewards`: resolved rewards to use instead of `cfg.rewards`; `parts`:
    trainer.TrainerParts (what is trainable, where rollouts come from, the loss)."""
    from onpolicy import determinism
    from onpolicy.build import (attach_generation_settings, build_model, build_sampler, build_tokenizer,
                                check_stop_strings, load_reward_models, resolve_device, warn_unknown_chars)
    from onpolicy.data import PromptIterator, load_prompts
    from onpolicy.eval_run import load_eval_rows
    from onpolicy.logging import StageTimes
    from onpolicy.lora.training import LoraAdapters
    from onpolicy.rewards.sources import resolve_rewards
    from onpolicy.trainer.cpu_threads import CpuThreads
    from onpolicy.trainer.distributed import Dist
    from onpolicy.trainer.parallel import choose_strategy
    from onpolicy.trainer.trainer import Trainer, TrainerParts

    clock = StageTimes()
    t = cfg.trainer
    parts = LoraAdapters.for_config(cfg, parts or TrainerParts(), log)  # lora.r > 0: the adapters train
    strategy = choose_strategy(Dist.current())
    rewards = resolve_rewards(cfg.rewards if rewards is None else rewards)
    check_before_compute(cfg, strategy, log)
    device = resolve_device(cfg.model.device)
    determinism.enable(seed=t.seed, cpu_threads=t.num_threads if isinstance(t.num_threads, int) else -1)
    threads = CpuThreads(t.num_threads, device)
    load_reward_models(rewards, device, log)
    tokenizer = build_tokenizer(cfg)
    check_stop_strings(cfg, tokenizer)
    if cfg.env.name is not None:  # multi-turn rollouts with an environment (onpolicy.envs)
        from onpolicy.envs.source import with_env_rollouts

        parts = with_env_rollouts(cfg, tokenizer, parts, log)
    rows = load_prompts(cfg.data, tokenizer)
    warn_unknown_chars(cfg, rows, log)
    eval_rows = load_eval_rows(cfg, tokenizer, rows) if t.eval_every else None
    clock.mark("tokenizer and data")
    model = build_model(cfg, device, t.seed)
    attach_generation_settings(model, tokenizer, log)
    clock.mark("model")
    sft_stats = _warm_start(cfg, model, tokenizer, rows, strategy.dist, threads, log)
    clock.mark("SFT")
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if t.beta > 0 else None
    trainable = parts.trainable.select(model)
    model.activation_checkpointing = t.activation_checkpointing
    optimizer = strategy.build_optimizer(model, trainable, t, device)
    clock.mark("optimizer")
    llm = build_sampler(cfg, model, tokenizer, device, strategy.dist.world_size, sharded=strategy.shards_masters)
    clock.mark("engine")
    prompts = PromptIterator(rows, t.prompts_per_step, seed=cfg.data.shuffle_seed)
    trainer = Trainer(cfg, device=device, strategy=strategy, model=model, optimizer=optimizer, sampler=llm,
                      tokenizer=tokenizer, parts=parts, ref_model=ref_model, prompts=prompts, rewards=rewards,
                      eval_rows=eval_rows, threads=threads)
    trainer.sft_stats = sft_stats
    _resume_and_log(trainer, log)
    threads.update()  # the first decision, from the load seen during set-up
    clock.mark("logger")
    trainer.setup_time = clock.last - clock.start
    log(clock.line("set-up"))
    return trainer


def _warm_start(cfg, model, tokenizer, rows, dist, threads, log) -> dict:
    """The SFT warm start: rank 0 runs it (or loads its cache) first; the others then load its cache."""
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    if not dist.is_main:
        dist.barrier()
    sft_stats = run_sft(cfg, model, tokenizer, rows, encode, log, on_step=threads.update, show_progress=dist.is_main)
    if dist.is_main:
        dist.barrier()
    return sft_stats


def _resume_and_log(trainer, log) -> None:
    """Load `trainer.resume` (when it names a checkpoint), trim metrics.jsonl to it, start the logger (console,
    metrics.jsonl and W&B from rank 0 only)."""
    from onpolicy.logging import RunLogger
    from onpolicy.trainer.checkpoint import resume_path
    from onpolicy.trainer.resume import trim_metrics

    cfg = trainer.cfg
    path = resume_path(cfg) if cfg.trainer.resume is not False else None
    if path is not None:
        trainer.start_step = trainer.load(path)
        if trainer.start_step:
            log(f"resumed after step {trainer.start_step}")
    if trainer.dist.is_main:
        trim_metrics(cfg, trainer.start_step, log)
    trainer.logger = RunLogger(cfg, enabled=trainer.dist.is_main, start_step=trainer.start_step)
