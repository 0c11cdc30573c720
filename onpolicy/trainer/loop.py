"""`train(cfg)`: the RL step loop. One step = sample -> score -> update, along the data flow:

`generate_rollouts` (the engine holds the same model object as the trainer: `trainer.prompts_per_step` prompts x
`sampling.num_generations` seeded samples) -> `Rollout` -> `score_rollouts` (rewards, group advantages, loss mask)
-> `ScoredBatch` -> `update_policy` (trainer forward, parity, loss, backward, optimizer step) -> metrics.
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
from onpolicy.trainer.rollout import generate_rollouts, merge_rollouts
from onpolicy.trainer.scoring import score_rollouts
from onpolicy.trainer.setup import Run, build_run, save_checkpoint
from onpolicy.trainer.summary import format_summary, summarize
from onpolicy.trainer.update import learning_rate, update_policy

__all__ = ["learning_rate", "rl_step", "train"]


def _sample_share(run: Run, prompt_ids: list, step: int):
    """This rank samples its contiguous share of the step's prompts; every rank gets the whole step's rollout
    (gathered in rank order, i.e. as world size 1 orders it), so scoring and metrics are global."""
    import torch

    mine = run.dist.share(range(len(prompt_ids)))
    with torch.no_grad():
        ro = generate_rollouts(run.llm, prompt_ids[mine.start:mine.stop], run.cfg.sampling,
                               run_seed=run.cfg.trainer.seed, step=step, first_index=mine.start)
    return merge_rollouts(run.dist.gather(ro)) if run.dist.world_size > 1 else ro


def rl_step(run: Run, step: int) -> dict:
    """One RL step (0-based `step`); returns its metrics (the step number logged is step + 1).
    A NonFiniteError carries the step's metrics so far (reward and completion metrics included). Call it inside
    `onpolicy.kernels.invariant_mode(cfg.trainer.invariant)`, as `train()` does."""
    cfg = run.cfg
    peak = PhasePeak(run.device)
    peak.start()
    t0 = time.perf_counter()
    from onpolicy.chat import encode_prompt

    rows = next(run.prompts)
    env_metrics = {}
    if run.env is None:
        ro = _sample_share(run, [encode_prompt(run.tokenizer, r) for r in rows], step)
    else:  # multi-turn: trajectories with an environment (onpolicy.envs)
        ro = run.env.rollouts(run, rows, step)
    t_sample = time.perf_counter() - t0
    sample_peak = peak.gib()
    if run.env is None:
        scored = score_rollouts(cfg, rows, ro, rewards=run.rewards, step=step)
    else:
        scored, env_metrics = run.env.score(rows, ro, run.rewards, step), run.env.metrics(ro, step)
    run.logger.log_samples(step + 1, [r["prompt"] for r in rows], scored)
    peak.start()
    t1 = time.perf_counter()
    try:
        update = update_policy(run, scored, step)
    except NonFiniteError as e:
        e.metrics = {"step": step + 1, **e.metrics, **scored.metrics(), **scored.completion_metrics()}
        raise
    t_train = time.perf_counter() - t1
    t_step = time.perf_counter() - t0
    memory = {} if sample_peak is None else {"memory/sample_peak_gib": sample_peak,
                                             "memory/train_peak_gib": peak.gib()}
    return {
        "step": step + 1, "world_size": run.dist.world_size, **update, **scored.metrics(),
        **scored.completion_metrics(), **env_metrics,
        "throughput/tokens_per_s": (ro.num_tokens + sum(len(p) for p in ro.prompt_ids)) / max(t_step, 1e-9),
        "time/sample": t_sample,
        "time/train": t_train,
        "time/step": t_step,
        **memory,
    }


def held_out_metrics(run: Run) -> dict:
    """`eval/*`: the held-out evaluation (onpolicy.eval_run) of the current policy, on every rank."""
    import torch

    from onpolicy.eval_run import evaluate

    t0 = time.perf_counter()
    with torch.no_grad():
        _, summary = evaluate(run.cfg, run.llm, run.tokenizer, run.eval_rows, run.dist, rewards=run.rewards)
    keys = [k for k in summary if k not in ("num_problems", "num_samples")]
    return {**{f"eval/{k}": summary[k] for k in keys}, "time/eval": time.perf_counter() - t0}


def _run_steps(run: Run, history: list[dict], log, mark: StepMark) -> int | None:
    """The step loop; returns the last step saved (None if none). `mark` follows the last completed step (for
    `keep_progress`). NonFiniteError: the step's metrics are logged, then it re-raises."""
    t = run.cfg.trainer
    saved = run.start_step or None
    watch = CollapseWatch(t.lr)
    log = run.logger.beside_bar(log)
    for step in range(run.start_step, t.steps):
        try:
            metrics = rl_step(run, step)
        except NonFiniteError as e:
            history.append(e.metrics)
            run.logger.log(e.metrics, step=step + 1)
            raise
        if t.eval_every and (step + 1) % t.eval_every == 0:
            metrics.update(held_out_metrics(run))
        history.append(metrics)
        run.logger.log(metrics, step=step + 1)
        mark.set(run, step + 1)
        run.threads.update()
        warning = watch.update(metrics)
        if warning:
            log(warning)
        if t.save_every and (step + 1) % t.save_every == 0:
            save_checkpoint(run, step + 1)
            saved = step + 1
    return saved


def _stop(run: Run, mark: StepMark, e: BaseException, history: list[dict], wall0: float, log) -> BaseException:
    """After a failure in the step loop: keep the progress, close the logger, print the resume command (and the
    summary after a NaN); returns the exception to raise."""
    saved = keep_progress(run, mark, e, log)
    try:
        run.logger.close()
    except Exception as close_error:  # noqa: BLE001 -- e.g. the disk that failed the run: report the run's error
        log(f"could not close the run's logs: {' '.join(str(close_error).split())}")
    command = resume_command(run.cfg, run.dist.world_size)
    if saved and not isinstance(e, KeyboardInterrupt):
        log(f"resume with: {command}")
    if isinstance(e, NonFiniteError):
        stopped = f"{e.what} non-finite at step {e.step}"
        log(format_summary(summarize(history, time.perf_counter() - wall0, run, saved, stopped=stopped)))
        return NonFiniteError(e.step, e.what, e.metrics, saved=saved)
    if isinstance(e, KeyboardInterrupt):
        return interrupted(e, mark.completed, saved, command)
    return e


def train(cfg, log=print, rewards=None) -> dict:
    """Run `cfg.trainer.steps` RL steps (after the optional SFT warm-start); returns a summary dict.
    The policy after the last step is always saved (`summary["final_policy"]`). `rewards`: resolved
    `onpolicy.rewards.sources.Reward`s (Python callables; `onpolicy.train`), default `cfg.rewards`."""
    from onpolicy import kernels
    from onpolicy.trainer.checkpoint import POLICY_DIR, checkpoint_root
    from onpolicy.trainer.distributed import Dist
    from onpolicy.trainer.run_dir import claim

    run_dir = claim(cfg, log) if Dist.current().is_main else None
    try:
        with kernels.invariant_mode(cfg.trainer.invariant):
            run = build_run(cfg, log=log, rewards=rewards)
            wall0 = time.perf_counter()
            history: list[dict] = []
            mark = StepMark(run)
            try:
                with stop_signals():
                    saved = _run_steps(run, history, log, mark)
            except BaseException as e:
                stop = _stop(run, mark, e, history, wall0, log)
                if stop is e:
                    raise
                raise stop from None
            final_step = run.start_step + len(history)
            if saved == final_step:
                path = str(checkpoint_root(cfg) / f"step-{final_step}")
            else:
                path = save_checkpoint(run, final_step)
            run.logger.close()
    finally:
        if run_dir is not None:
            run_dir.release()
    summary = summarize(history, time.perf_counter() - wall0, run, f"{path}/{POLICY_DIR}")
    log(format_summary(summary))
    return summary
