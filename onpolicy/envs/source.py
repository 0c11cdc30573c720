"""`EnvSource`: where a step's rollouts come from when `env.name` is set -- the trainer's side of environments.

`rollouts(run, rows, step)`: this rank's share of the rows runs its trajectories on the run's engine
(`generate_trajectories`), and every rank gets the whole step's `EnvRollout`, gathered in rank order (as world
size 1 orders it). `score(rows, ro, rewards, step)`: `score_trajectories`. `metrics(ro)`: the `env/*`
metrics; a step where environments failed also logs one line with the first reason. Built before compute: the
environment resolves and the tokenizer has a chat template.
"""
from __future__ import annotations

from onpolicy.envs.registry import resolve_env
from onpolicy.envs.render import ChatDelta
from onpolicy.envs.scoring import score_trajectories


class EnvSource:
    def __init__(self, cfg, tokenizer, log=print):
        self.cfg, self.log = cfg, log
        self.make_env = resolve_env(cfg.env)
        ChatDelta(tokenizer)  # the one-line error for a tokenizer without a chat template, now

    def rollouts(self, run, rows: list[dict], step: int):
        import torch

        from onpolicy.envs.rollout import generate_trajectories
        from onpolicy.trainer.rollout import merge_rollouts

        cfg = self.cfg
        mine = run.dist.share(range(len(rows)))
        with torch.no_grad():
            ro = generate_trajectories(run.llm, run.tokenizer, rows[mine.start:mine.stop], self.make_env,
                                       cfg.sampling, cfg.env, run_seed=cfg.trainer.seed, step=step,
                                       first_index=mine.start, template_kwargs=cfg.data.chat_template_kwargs)
        return merge_rollouts(run.dist.gather(ro)) if run.dist.world_size > 1 else ro

    def score(self, rows: list[dict], ro, rewards, step: int):
        return score_trajectories(self.cfg, rows, ro, rewards=rewards, step=step)

    def metrics(self, ro, step: int) -> dict:
        failed = [e for e, f in zip(ro.errors, ro.finish_reasons) if f == "env_error"]
        if failed:
            self.log(f"step {step + 1}: {len(failed)}/{len(ro.errors)} trajectories ended by an environment error "
                     f"(masked out of the loss); the first: {failed[0]}")
        return ro.metrics()
