"""`EnvRollouts`: the trainer's `RolloutSource` when `env.name` is set (`with_env_rollouts` puts it in the
`TrainerParts` of the run).

`collect(rows, step)`: this rank's share of the rows runs its trajectories on the trainer's engine
(`generate_trajectories`), and every rank gets the whole step's `EnvRollout`, gathered in rank order (as world
size 1 orders it); a step where environments failed logs one line with the first reason. Checked before any
model is built (`with_env_rollouts`): the environment resolves, the tokenizer has a chat template, the stop
strings can be matched.
"""
from __future__ import annotations

import dataclasses
from functools import partial

from onpolicy.envs.registry import resolve_env
from onpolicy.envs.render import ChatDelta


class EnvRollouts:
    def __init__(self, cfg, sampler, tokenizer, dist, log=print):
        self.cfg, self.sampler, self.tokenizer, self.dist, self.log = cfg, sampler, tokenizer, dist, log
        self.make_env = resolve_env(cfg.env)

    @classmethod
    def for_trainer(cls, trainer, log=print) -> "EnvRollouts":
        return cls(trainer.cfg, trainer.sampler, trainer.tokenizer, trainer.dist, log)

    def collect(self, rows: list[dict], step: int):
        import torch

        from onpolicy.envs.rollout import generate_trajectories
        from onpolicy.trainer.rollout import merge_rollouts

        cfg = self.cfg
        mine = self.dist.share(range(len(rows)))
        with torch.no_grad():
            ro = generate_trajectories(self.sampler, self.tokenizer, rows[mine.start:mine.stop], self.make_env,
                                       cfg.sampling, cfg.env, run_seed=cfg.trainer.seed, step=step,
                                       first_index=mine.start, template_kwargs=cfg.data.chat_template_kwargs)
        ro = merge_rollouts(self.dist.gather(ro)) if self.dist.world_size > 1 else ro
        failed = [e for e, f in zip(ro.errors, ro.finish_reasons) if f == "env_error"]
        if failed:
            self.log(f"step {step + 1}: {len(failed)}/{len(ro.errors)} trajectories ended by an environment error "
                     f"(masked out of the loss); the first: {failed[0]}")
        return ro


def with_env_rollouts(cfg, tokenizer, parts, log=print):
    """`parts` with rollouts from the environment (unless the caller chose another source). Checks first: the
    environment resolves, the tokenizer has a chat template, the engine can match every `env.stop` string."""
    from onpolicy.engine import SamplingParams
    from onpolicy.engine.stopping import special_tokens, stop_rule
    from onpolicy.trainer.rollout import SingleTurnRollouts

    resolve_env(cfg.env)
    ChatDelta(tokenizer)
    stop_rule(SamplingParams(stop=list(cfg.env.stop) or None), [], special_tokens(tokenizer), "env")
    if parts.rollouts != SingleTurnRollouts.for_trainer:  # a bound classmethod: equal, not identical
        return parts
    return dataclasses.replace(parts, rollouts=partial(EnvRollouts.for_trainer, log=log))
