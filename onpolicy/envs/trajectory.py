"""One trajectory while it runs, and `EnvRollout`, the step's trajectories in the trainer's `Rollout` form.

A trajectory's tokens after the prompt are the model's turns and the environment's observations, back to back;
`loss_mask` marks the model's (True) and the environment's (False) tokens. `sampler_logprobs` covers the
model's tokens only, in order, so `seq_lens` (what the loss, the parity metrics and the advantages count) are the
model's tokens of each trajectory. Rewards see what TRL's multi-turn rollouts give them (`reward_inputs`):
`prompts` = the opening messages, each completion = the messages after them (assistant turns and
observations, the last assistant turn last), plus the columns `env_reward` (the sum of the trajectory's step
rewards; the reward `env` returns it), `turn_rewards` and `env_finish`. A trajectory an environment error ended
keeps its group's reward statistics and is masked out of the loss (`excluded`); `trainer.overlong_filter`
masks those cut by max_turns or max_total_tokens (`truncated`). How a trajectory ended (`finish_reasons`):
    done        the environment said done
    max_turns   env.max_turns assistant turns were taken
    length      env.max_total_tokens (or the model's context) left no room for the next observation or turn
    env_error   reset/step raised, timed out or returned something malformed (`errors` says what)
Left out: per-turn advantages (every model token of a trajectory gets its trajectory's advantage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from onpolicy.envs.base import row_messages
from onpolicy.envs.render import placeholder_turn
from onpolicy.trainer.rollout import Rollout

FINISH_REASONS = ("done", "max_turns", "length", "env_error")
TRUNCATED = ("max_turns", "length")


class Trajectory:
    """Mutable state of one trajectory during the rollout loop."""

    def __init__(self, group: int, sample: int):
        self.group, self.sample = group, sample
        self.env = None
        self.delta = None                          # onpolicy.envs.render.ChatDelta
        self.prompt_ids: list[int] = []
        self.prompt_messages: list[dict] = []
        self.ids: list[int] = []                   # every token after the prompt
        self.mask: list[bool] = []                 # True: a model token
        self.logprobs: list[torch.Tensor] = []     # per turn, the sampler's
        self.history: list[dict] = []              # for rendering: assistant turns as placeholders
        self.messages: list[dict] = []             # the real turns and observations after the prompt
        self.turn_rewards: list[float] = []
        self.turns = 0
        self.finish: str | None = None
        self.error: str | None = None

    @property
    def active(self) -> bool:
        return self.finish is None

    def end(self, finish: str, error: str | None = None) -> None:
        self.finish, self.error = finish, error

    def add_turn(self, ids: list[int], logprobs: torch.Tensor, text: str) -> None:
        self.ids += ids
        self.mask += [True] * len(ids)
        self.logprobs.append(logprobs)
        self.messages.append({"role": "assistant", "content": text})
        self.turns += 1

    def add_observation(self, ids: list[int], messages: list[dict]) -> None:
        self.ids += ids
        self.mask += [False] * len(ids)
        self.history += [placeholder_turn(), *messages]
        self.messages += messages


@dataclass
class EnvRollout(Rollout):
    """A step's trajectories (prompt-major, as `Rollout`): `completion_ids` hold every token after the prompt,
    `texts` the same decoded with special tokens kept (what the samples log shows)."""

    turn_rewards: list[list[float]] = field(default_factory=list)
    num_turns: list[int] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    prompt_messages: list[list[dict]] = field(default_factory=list)
    messages: list[list[dict]] = field(default_factory=list)
    env_seconds: float = 0.0

    @property
    def truncated(self) -> list[bool]:
        return [f in TRUNCATED for f in self.finish_reasons]

    @property
    def excluded(self) -> list[bool]:
        return [f == "env_error" for f in self.finish_reasons]

    def reward_inputs(self, rows: list[dict]) -> tuple[list, list, dict]:
        """(opening messages, messages after them, env columns) per trajectory (see the module doc)."""
        prompts = [opening or row_messages(rows[g]) for g, opening in zip(self.group_index, self.prompt_messages)]
        completions = [m or [{"role": "assistant", "content": ""}] for m in self.messages]
        extra = {"env_reward": self.env_rewards, "turn_rewards": [list(r) for r in self.turn_rewards],
                 "env_finish": list(self.finish_reasons)}
        return prompts, completions, extra

    @property
    def env_rewards(self) -> list[float]:
        return [sum(r) for r in self.turn_rewards]

    def metrics(self) -> dict:
        """env/*: turns, how trajectories ended, token counts and the environment's reward."""
        n = max(len(self.finish_reasons), 1)
        out = {f"env/{f}_frac": sum(r == f for r in self.finish_reasons) / n for f in FINISH_REASONS}
        all_turns = [r for rs in self.turn_rewards for r in rs]
        out.update({"env/turns_mean": sum(self.num_turns) / n,
                    "env/reward_mean": sum(self.env_rewards) / n,
                    "env/turn_reward_mean": sum(all_turns) / max(len(all_turns), 1),
                    "env/model_tokens_mean": sum(self.seq_lens) / n,
                    "env/observation_tokens_mean": sum(len(c) for c in self.completion_ids) / n
                    - sum(self.seq_lens) / n,
                    "time/env": self.env_seconds})
        return out


def to_rollout(trajs: list[Trajectory], group_size: int, env_seconds: float, tokenizer) -> EnvRollout:
    ro = EnvRollout(group_size=group_size, env_seconds=env_seconds)
    for t in trajs:
        ro.prompt_ids.append(list(t.prompt_ids))
        ro.completion_ids.append(list(t.ids))
        ro.sampler_logprobs.append(torch.cat(t.logprobs) if t.logprobs else torch.zeros(0))
        ro.texts.append(tokenizer.decode(t.ids, skip_special_tokens=False))
        ro.finish_reasons.append(t.finish)
        ro.group_index.append(t.group)
        ro.loss_mask.append(torch.tensor(t.mask, dtype=torch.bool))
        ro.turn_rewards.append(list(t.turn_rewards))
        ro.num_turns.append(t.turns)
        ro.errors.append(t.error)
        ro.prompt_messages.append(t.prompt_messages)
        ro.messages.append(t.messages)
    return ro
