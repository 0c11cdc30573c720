"""`train(cfg)`: the RL step loop. One step = sample -> score -> update, along the data flow:

`generate_rollouts` (the engine holds the same model object as the trainer: `trainer.prompts_per_step` prompts x
`sampling.num_generations` seeded samples) -> `Rollout` -> `score_rollouts` (rewards, group advantages, loss mask)
-> `ScoredBatch` -> `update_policy` (trainer forward, parity, loss, backward, optimizer step) -> metrics.
On CUDA each step logs `memory/sample_peak_gib` and `memory/train_peak_gib` (peak allocated per phase).
`train()` enters the kernels' invariant mode (`trainer.invariant`) once around the whole run, checkpoints every
`save_every` steps and always at the end (the final policy is an HF directory loadable by transformers),
re-decides torch's CPU thread count after each step (`cpu_threads.CpuThreads`, `trainer.num_threads`), logs
sample completions (`RunLogger.log_samples`), stops with `NonFiniteError` (after saving the last good policy,
i.e. the weights before the bad update, which is never applied) and warns when the run has had no learning signal for several steps (`health.CollapseWatch`).
Several processes (`accelerate launch`): each rank samples its share of the prompts, the rollouts are gathered
in global order and every rank scores the whole step (onpolicy.trainer.distributed); `world_size` is logged.
See `update.py` for what the update leaves out.
"""
from __future__ import annotations

import time

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
    prompt_ids = [encode_prompt(run.tokenizer, r) for r in rows]
    ro = _sample_share(run, prompt_ids, step)
    t_sample = time.perf_counter() - t0
    sample_peak = peak.gib()
    scored = score_rollouts(cfg, rows, ro, rewards=run.rewards, step=step)
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
        **scored.completion_metrics(),
        "throughput/tokens_per_s": (ro.num_tokens + sum(len(p) for p in ro.prompt_ids)) / max(t_step, 1e-9),
        "time/sample": t_sample,
        "time/train": t_train,
        "time/step": t_step,
        **memory,
    }


def _last_saved(run: Run) -> str | None:
    """The policy directory of the newest checkpoint on disk (None if there is none)."""
    from onpolicy.trainer.checkpoint import POLICY_DIR, checkpoint_root, list_checkpoints

    done = list_checkpoints(checkpoint_root(run.cfg))
    return f"{done[-1][1]}/{POLICY_DIR}" if done else None


def _run_steps(run: Run, history: list[dict], log) -> int | None:
    """The step loop; returns the last step saved (None if none). NonFiniteError: the step's metrics are
    logged, the last good policy saved (prompt position rewound to before the bad step), then it re-raises."""
    t = run.cfg.trainer
    saved = run.start_step or None
    watch = CollapseWatch(t.lr)
    log = run.logger.beside_bar(log)
    for step in range(run.start_step, t.steps):
        prompt_state = run.prompts.state_dict()
        try:
            metrics = rl_step(run, step)
        except NonFiniteError as e:
            history.append(e.metrics)
            run.logger.log(e.metrics, step=step + 1)
            run.prompts.load_state_dict(prompt_state)
            # some updates of the step applied (the weights in memory are not good), or several ranks (the others
            # may wait in a collective: no collective save; the launcher stops them): the last checkpoint on disk
            if getattr(e, "partial", False) or run.dist.world_size > 1:
                raise NonFiniteError(e.step, e.what, e.metrics, saved=_last_saved(run)) from None
            path = save_checkpoint(run, step)
            raise NonFiniteError(e.step, e.what, e.metrics, saved=f"{path}/policy") from None
        history.append(metrics)
        run.logger.log(metrics, step=step + 1)
        run.threads.update()
        warning = watch.update(metrics)
        if warning:
            log(warning)
        if t.save_every and (step + 1) % t.save_every == 0:
            save_checkpoint(run, step + 1)
            saved = step + 1
    return saved


def train(cfg, log=print, rewards=None) -> dict:
    """Run `cfg.trainer.steps` RL steps (after the optional SFT warm-start); returns a summary dict.
    The policy after the last step is always saved (`summary["final_policy"]`). `rewards`: resolved
    `onpolicy.rewards.sources.Reward`s (Python callables; `onpolicy.train`), default `cfg.rewards`."""
    from onpolicy import kernels
    from onpolicy.trainer.checkpoint import POLICY_DIR, checkpoint_root

    with kernels.invariant_mode(cfg.trainer.invariant):
        run = build_run(cfg, log=log, rewards=rewards)
        wall0 = time.perf_counter()
        history: list[dict] = []
        try:
            saved = _run_steps(run, history, log)
        except NonFiniteError as e:
            run.logger.close()
            stopped = f"{e.what} non-finite at step {e.step}"
            log(format_summary(summarize(history, time.perf_counter() - wall0, run, e.saved, stopped=stopped)))
            raise
        except BaseException:
            run.logger.close()
            raise
        final_step = run.start_step + len(history)
        if saved == final_step:
            path = str(checkpoint_root(cfg) / f"step-{final_step}")
        else:
            path = save_checkpoint(run, final_step)
        run.logger.close()
    summary = summarize(history, time.perf_counter() - wall0, run, f"{path}/{POLICY_DIR}")
    log(format_summary(summary))
    return summary
