"""`train(cfg)`: the RL step loop of a `Trainer`. One step = sample -> score -> update, along the data flow:

`Trainer.rollouts.collect` (default: the engine, which holds the same model object as the trainer:
`trainer.prompts_per_step` prompts x `sampling.num_generations` seeded samples) -> `Rollout` -> `Trainer.score`
(default `score_rollouts`: rewards, group advantages, loss mask) -> `ScoredBatch` -> `Trainer.update` (trainer
forward, parity, loss, backward, optimizer step) -> metrics.
On CUDA each step logs `memory/sample_peak_gib` and `memory/train_peak_gib` (peak allocated per phase).
`train()` enters the kernels' invariant mode (`trainer.invariant`) once around the whole run, checkpoints every
`save_every` steps and always at the end (the final policy is an HF directory loadable by transformers),
re-decides torch's CPU thread count after each step (`cpu_threads.CpuThreads`, `trainer.num_threads`), logs
sample completions (`RunLogger.log_samples`), evaluates the held-out set every `trainer.eval_every` steps
(`eval/*` metrics, onpolicy.eval_run), stops with `NonFiniteError` (the bad update is never applied) and
warns when the run has had no learning signal for several steps (`health.CollapseWatch`). Any failure in the
step loop (NaN, a reward or data error, Ctrl-C, SIGTERM) saves the last consistent state and prints the resume
command (`onpolicy.trainer.failure`); the run directory is claimed (locked, checked) before any compute and
released however the run ends (`onpolicy.trainer.run_dir`).
Several processes (`accelerate launch`): each rank samples its share of the prompts, the rollouts are gathered
in global order and every rank scores the whole step (onpolicy.trainer.distributed); `world_size` is logged.
See `update.py` for what the update leaves out.
"""
from __future__ import annotations

import time

from onpolicy.trainer.failure import StepMark, interrupted, keep_progress, resume_command, stop_signals
from onpolicy.trainer.health import CollapseWatch, NonFiniteError
from onpolicy.trainer.memory import PhasePeak
from onpolicy.trainer.setup import build_trainer
from onpolicy.trainer.summary import format_summary, summarize
from onpolicy.trainer.trainer import Trainer
from onpolicy.trainer.update import learning_rate

__all__ = ["learning_rate", "rl_step", "train"]


def rl_step(trainer: Trainer, step: int) -> dict:
    """One RL step (0-based `step`); returns its metrics (the step number logged is step + 1).
    A NonFiniteError (from the update) carries the step's metrics so far, reward and completion metrics
    included. Call it inside
    `onpolicy.kernels.invariant_mode(cfg.trainer.invariant)`, as `train()` does."""
    peak = PhasePeak(trainer.device)
    peak.start()
    t0 = time.perf_counter()
    rows = next(trainer.prompts)
    ro = trainer.rollouts.collect(rows, step)
    t_sample = time.perf_counter() - t0
    sample_peak = peak.gib()
    scored = trainer.score(rows, ro, step)
    trainer.logger.log_samples(step + 1, [r["prompt"] for r in rows], scored)
    peak.start()
    t1 = time.perf_counter()
    update = trainer.update(scored, step)
    t_train = time.perf_counter() - t1
    t_step = time.perf_counter() - t0
    memory = {} if sample_peak is None else {"memory/sample_peak_gib": sample_peak,
                                             "memory/train_peak_gib": peak.gib()}
    return {
        "step": step + 1, "world_size": trainer.dist.world_size, **update, **scored.metrics(),
        **scored.completion_metrics(), **ro.metrics(),
        "throughput/tokens_per_s": (ro.num_tokens + sum(len(p) for p in ro.prompt_ids)) / max(t_step, 1e-9),
        "time/sample": t_sample,
        "time/train": t_train,
        "time/step": t_step,
        **memory,
    }


def _run_steps(trainer: Trainer, history: list[dict], log, mark: StepMark) -> int | None:
    """The step loop; returns the last step saved (None if none). `mark` follows the last completed step (for
    `keep_progress`). NonFiniteError: the step's metrics are logged, then it re-raises."""
    t = trainer.cfg.trainer
    saved = trainer.start_step or None
    watch = CollapseWatch(t.lr)
    log = trainer.logger.beside_bar(log)
    for step in range(trainer.start_step, t.steps):
        try:
            metrics = rl_step(trainer, step)
        except NonFiniteError as e:
            history.append(e.metrics)
            trainer.logger.log(e.metrics, step=step + 1)
            raise
        if t.eval_every and (step + 1) % t.eval_every == 0:
            metrics.update(trainer.held_out_metrics())
        history.append(metrics)
        trainer.logger.log(metrics, step=step + 1)
        mark.set(trainer, step + 1)
        trainer.threads.update()
        warning = watch.update(metrics)
        if warning:
            log(warning)
        if t.save_every and (step + 1) % t.save_every == 0:
            trainer.save(step + 1)
            saved = step + 1
    return saved


def _stop(trainer: Trainer, mark: StepMark, e: BaseException, history: list[dict], wall0: float,
          log) -> BaseException:
    """After a failure in the step loop: keep the progress, close the logger, print the resume command (and the
    summary after a NaN); returns the exception to raise."""
    saved = keep_progress(trainer, mark, e, log)
    try:
        trainer.logger.close()
    except Exception as close_error:  # noqa: BLE001 -- e.g. the disk that failed the run: report the run's error
        log(f"could not close the run's logs: {' '.join(str(close_error).split())}")
    command = resume_command(trainer.cfg, trainer.dist.world_size)
    if saved and not isinstance(e, KeyboardInterrupt):
        log(f"resume with: {command}")
    if isinstance(e, NonFiniteError):
        e.saved = saved  # the message names it
        stopped = f"{e.subject} non-finite at step {e.step}"
        log(format_summary(summarize(history, time.perf_counter() - wall0, trainer, saved, stopped=stopped)))
        return e
    if isinstance(e, KeyboardInterrupt):
        return interrupted(e, mark.completed, saved, command)
    return e


def train(cfg, log=print, rewards=None, parts=None, builder=build_trainer) -> dict:
    """Run `cfg.trainer.steps` RL steps (after the optional SFT warm-start); returns a summary dict.
    The policy after the last step is always saved (`summary["final_policy"]`). `rewards`: resolved
    `onpolicy.rewards.sources.Reward`s (Python callables; `onpolicy.train`), default `cfg.rewards`; `parts`:
    `trainer.TrainerParts` (what is trainable, where rollouts come from, the loss), default the standard ones;
    `builder`: makes the Trainer once the run directory is claimed (`setup.build_trainer`'s signature)."""
    from onpolicy import kernels
    from onpolicy.lora.training import ADAPTER_DIR, save_final_merged
    from onpolicy.trainer.checkpoint import POLICY_DIR, checkpoint_root
    from onpolicy.trainer.distributed import Dist
    from onpolicy.trainer.run_dir import claim

    run_dir = claim(cfg, log) if Dist.current().is_main else None
    try:
        with kernels.invariant_mode(cfg.trainer.invariant):
            trainer = builder(cfg, log=log, rewards=rewards, parts=parts)
            wall0 = time.perf_counter()
            history: list[dict] = []
            mark = StepMark(trainer)
            try:
                with stop_signals():
                    saved = _run_steps(trainer, history, log, mark)
            except BaseException as e:
                stop = _stop(trainer, mark, e, history, wall0, log)
                if stop is e:
                    raise
                raise stop from None
            final_step = trainer.start_step + len(history)
            if saved == final_step:
                path = str(checkpoint_root(cfg) / f"step-{final_step}")
            else:
                path = trainer.save(final_step)
            if trainer.dist.is_main:
                save_final_merged(cfg, trainer.model, log)  # lora.save_merged
            trainer.logger.close()
    finally:
        if run_dir is not None:
            run_dir.release()
    policy = f"{path}/{ADAPTER_DIR if cfg.lora.enabled else POLICY_DIR}"  # LoRA: the PEFT adapter (base: policy/)
    summary = summarize(history, time.perf_counter() - wall0, trainer, policy)
    log(format_summary(summary))
    return summary
