"""`train(cfg)`: the RL step loop -- sample, reward, recompute logprobs, compare, update.

One step: `trainer.prompts_per_step` prompts -> `LLM.generate` G seeded samples each (the engine holds the
same model object as the trainer) -> rewards (`combine_rewards`) -> group advantages -> `sequence_logprobs`
(packed varlen forward, autograd) -> parity metrics vs the sampler's logprobs (`strict_onpolicy` stops on the
first mismatch) -> clipped policy loss -> backward, grad clip, AdamW -> `llm.reset_prefix_cache()`.
The PPO ratio uses the sampler's logprobs as "old" in invariant mode (ratio == 1 exactly); with
`invariant: false` it uses the trainer's own detached logprobs (one update per batch, as TRL) and `tis_cap`
adds the truncated importance weight min(exp(trainer - sampler), cap) for the sampler/trainer mismatch.
DAPO's dynamic sampling masks the tokens of zero-variance groups out of the loss (their advantage is 0 anyway;
the mask changes the token normaliser) rather than resampling; overlong filtering masks "length" completions.
Left out: resampling to refill dropped groups, micro-batching of the trainer forward, several updates per
batch, multi-GPU (accelerate) sharding.
"""
from __future__ import annotations

import math
import os
import time

import torch

from onpolicy.trainer.advantages import group_advantages, group_reward_stats, zero_variance_groups
from onpolicy.trainer.losses import policy_loss, truncated_is_weights
from onpolicy.trainer.parity import OnPolicyViolation, first_mismatch, mismatch_report, parity_metrics
from onpolicy.trainer.rollout import generate_rollouts
from onpolicy.trainer.setup import Run, build_run, save_checkpoint


def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup over `warmup_steps` (step is 0-based), then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def _trainer_logprobs(model, ro, temperature: float, invariant: bool, grad: bool) -> list[torch.Tensor]:
    from onpolicy import kernels
    from onpolicy.model import sequence_logprobs

    with kernels.invariant_mode(invariant), torch.set_grad_enabled(grad):
        return sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, temperature=temperature)


def rl_step(run: Run, step: int) -> dict:
    """One RL step (0-based `step`); returns its metrics (the step number logged is step + 1)."""
    cfg, t = run.cfg, run.cfg.trainer
    s = cfg.sampling
    t0 = time.perf_counter()
    rows = next(run.prompts)
    prompt_ids = [run.encode(r["prompt"]) for r in rows]
    from onpolicy import kernels

    with kernels.invariant_mode(t.invariant), torch.no_grad():
        ro = generate_rollouts(run.llm, prompt_ids, s, run_seed=t.seed, step=step)
    t_sample = time.perf_counter() - t0

    from onpolicy.rewards import combine_rewards

    expanded = [rows[i] for i in ro.group_index]
    columns = {k: [r.get(k) for r in expanded] for k in rows[0] if k != "prompt"}
    total, per_name = combine_rewards(cfg.rewards, [r["prompt"] for r in expanded], ro.texts, **columns)
    rewards = torch.tensor(total, dtype=torch.float32)
    adv = group_advantages(rewards, s.num_generations, t.algo)

    t1 = time.perf_counter()
    run.model.train()
    trainer_lps = _trainer_logprobs(run.model, ro, s.temperature, t.invariant, grad=True)
    metrics = parity_metrics(ro.sampler_logprobs, trainer_lps)
    if t.strict_onpolicy:
        mm = first_mismatch(ro.sampler_logprobs, trainer_lps)
        if mm is not None:
            raise OnPolicyViolation(mismatch_report(mm, step + 1, f"prompt {ro.prompt_ids[mm.sequence]!r}; "))

    device = run.device
    lp = torch.cat(trainer_lps)
    sampler_lp = torch.cat(ro.sampler_logprobs).to(device)
    old = sampler_lp if t.invariant else lp.detach()
    seq_lens = ro.seq_lens
    lens = torch.tensor(seq_lens, dtype=torch.long)
    mask = torch.ones(lp.numel(), dtype=torch.bool)  # per token, on the CPU
    kept_groups = len(rows)
    if t.dynamic_sampling:
        dropped = zero_variance_groups(rewards, s.num_generations)
        token_group = torch.repeat_interleave(torch.tensor(ro.group_index, dtype=torch.long), lens)
        mask &= ~dropped[token_group]
        kept_groups -= int(dropped.sum())
    truncated = torch.tensor([fr == "length" for fr in ro.finish_reasons], dtype=torch.bool)
    if t.overlong_filter:
        mask &= ~torch.repeat_interleave(truncated, lens)
    ref_lp = None
    if t.beta > 0:
        ref_lp = torch.cat(_trainer_logprobs(run.ref_model, ro, s.temperature, t.invariant, grad=False))
    is_w = truncated_is_weights(lp, sampler_lp, t.tis_cap) if t.tis_cap is not None else None
    out = policy_loss(lp, old, adv.to(device), seq_lens, epsilon_low=t.epsilon_low, epsilon_high=t.epsilon_high,
                      agg=t.loss_agg, max_tokens=s.max_tokens, loss_mask=mask.to(device), beta=t.beta,
                      ref_logprobs=ref_lp, is_weights=is_w)

    lr = learning_rate(step, t.lr, t.warmup_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm).item()
    if math.isfinite(grad_norm):
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.llm.reset_prefix_cache()
    t_train = time.perf_counter() - t1
    t_step = time.perf_counter() - t0

    metrics.update(group_reward_stats(rewards, s.num_generations))
    for name, vals in per_name.items():
        if len(per_name) > 1:
            metrics[f"reward/{name}"] = sum(vals) / len(vals)
    n_tokens = ro.num_tokens
    metrics.update({
        "step": step + 1,
        "loss": out.loss.item(),
        "grad_norm": grad_norm,
        "lr": lr,
        "loss/clip_frac": out.clip_frac,
        "loss/ratio_mean": out.ratio_mean,
        "loss/kl_ref": out.kl_ref,
        "completion/mean_length": n_tokens / max(len(seq_lens), 1),
        "completion/truncated_frac": truncated.float().mean().item(),
        "dapo/kept_groups": kept_groups,
        "throughput/tokens_per_s": (n_tokens + sum(len(p) for p in ro.prompt_ids)) / max(t_step, 1e-9),
        "time/sample": t_sample,
        "time/train": t_train,
        "time/step": t_step,
    })
    return metrics


def train(cfg, log=print) -> dict:
    """Run `cfg.trainer.steps` RL steps (after the optional SFT warm-start); returns a summary dict."""
    run = build_run(cfg, log=log)
    t = cfg.trainer
    wall0 = time.perf_counter()
    history: list[dict] = []
    try:
        for step in range(run.start_step, t.steps):
            metrics = rl_step(run, step)
            history.append(metrics)
            run.logger.log(metrics, step=step + 1)
            if t.save_every and (step + 1) % t.save_every == 0:
                save_checkpoint(run, step + 1)
    finally:
        run.logger.close()
    wall = time.perf_counter() - wall0
    summary = summarize(history, wall, run)
    log(format_summary(summary))
    return summary


WINDOW = 10  # steps averaged for the summary's start/end reward (one step's 16 prompts are noisy)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(history: list[dict], wall: float, run: Run) -> dict:
    rewards = [m["reward/mean"] for m in history]
    return {
        "steps": len(history),
        "start_step": run.start_step,
        "wall_time_s": wall + run.setup_time,
        "rl_time_s": wall,
        "reward_first": rewards[0] if rewards else float("nan"),
        "reward_last": rewards[-1] if rewards else float("nan"),
        f"reward_first{WINDOW}": _mean(rewards[:WINDOW]),
        f"reward_last{WINDOW}": _mean(rewards[-WINDOW:]),
        "max_abs_kl": max((abs(m["onpolicy/kl"]) for m in history), default=0.0),
        "max_logprob_diff": max((m["onpolicy/logprob_diff/max"] for m in history), default=0.0),
        "max_mismatch_frac": max((m["onpolicy/mismatch_frac"] for m in history), default=0.0),
        "output_dir": os.path.abspath(run.cfg.logging.output_dir),
        "history": history,
    }


def format_summary(s: dict) -> str:
    return (f"done: {s['steps']} steps in {s['wall_time_s']:.1f}s (RL {s['rl_time_s']:.1f}s); reward "
            f"{s['reward_first']:.3f} -> {s['reward_last']:.3f} (mean of first/last {WINDOW} steps: "
            f"{s[f'reward_first{WINDOW}']:.3f} -> {s[f'reward_last{WINDOW}']:.3f}); max |onpolicy/kl| {s['max_abs_kl']!r}, max "
            f"|logprob diff| {s['max_logprob_diff']!r}, max mismatch_frac {s['max_mismatch_frac']!r}; "
            f"outputs in {s['output_dir']}")
