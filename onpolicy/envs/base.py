"""The environment interface: what a multi-turn rollout asks of an environment, and what it checks it returns.

An environment is a class (or any zero-argument factory after `env.kwargs` are bound); the rollout makes one
instance per trajectory, as TRL's `environment_factory` and OpenEnv clients do:

    class Guess:
        def reset(self, row: dict) -> list[dict]:            # the opening messages, rendered with the chat template
            self.secret = int(row["answer"])
            return [{"role": "user", "content": row["prompt"]}]

        def step(self, turn: Turn):                          # -> (observation messages, reward, done)
            guess = int(turn) if turn.strip().isdigit() else -1
            if guess == self.secret:
                return [], 1.0, True
            return [{"role": "user", "content": "higher" if guess < self.secret else "lower"}], 0.0, False

`turn` is a `Turn`: the assistant turn's text (a `str`, decoded without special tokens, turn-ending stop string
included) that also carries its `token_ids` (the sampler's own), `finish_reason` ("stop" or "length") and
`index` (0-based). `step` returns a `StepResult` or any 3-tuple: observation messages (a list of
{"role", "content"} dicts, one such dict, or a str meaning one user message; empty when done), a reward (a
number, None = 0) and done. Optional: `tools` (JSON tool schemas, passed to `apply_chat_template(tools=...)`)
and `close()` (called once the trajectory ends). Whatever an environment raises or returns wrongly ends that
trajectory with the reason recorded, never the run. Left out: async environments, per-token (process) rewards.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Turn(str):
    """One assistant turn as the environment sees it: its text, plus the sampler's token ids of the turn."""

    token_ids: tuple
    finish_reason: str
    index: int

    def __new__(cls, text: str, token_ids, finish_reason: str, index: int):
        self = super().__new__(cls, text)
        self.token_ids, self.finish_reason, self.index = tuple(token_ids), finish_reason, index
        return self


class StepResult(NamedTuple):
    messages: list
    reward: float = 0.0
    done: bool = False


class EnvError(Exception):
    """An environment broke its contract (bad return value, bad messages); ends the trajectory, not the run."""


def checked_messages(value, what: str) -> list[dict]:
    """Observation or reset messages in their one form: a list of {"role": str, "content": str} dicts."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise EnvError(f"{what} must be a list of {{role, content}} messages, a message or a str; got "
                       f"{type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise EnvError(f"{what}[{j}] must be a dict with a str 'role' and a str 'content'; got {m!r:.80}")
        if m["role"] == "assistant":
            raise EnvError(f"{what}[{j}] has role 'assistant'; allowed: user, tool or system messages (assistant "
                           "turns are the model's)")
        out.append(dict(m))
    return out


def checked_step(value) -> StepResult:
    """`step`'s return value as a StepResult, or EnvError naming what is wrong."""
    if not isinstance(value, tuple) or len(value) != 3:
        raise EnvError(f"step must return (messages, reward, done) or a StepResult; got {value!r:.80}")
    messages, reward, done = value
    reward = 0.0 if reward is None else reward
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise EnvError(f"step returned reward {reward!r}; allowed: a finite number or None")
    if not isinstance(done, bool):
        raise EnvError(f"step returned done {done!r}; allowed: True or False")
    return StepResult(checked_messages(messages, "step messages"), float(reward), done)


def close_quietly(env) -> str | None:
    """Call env.close() when it has one; returns the error text instead of raising."""
    close = getattr(env, "close", None)
    if close is None:
        return None
    try:
        close()
    except Exception as e:  # noqa: BLE001 -- a failing close is recorded, never fatal
        return f"close raised {type(e).__name__}: {e}"
    return None


def row_messages(row: dict) -> list[dict]:
    """A data row's prompt as messages: its chat messages (`prompt_messages`, system prompt included), or its
    text prompt as one user message. For `reset` implementations."""
    messages = row.get("prompt_messages")
    if messages:
        return [dict(m) for m in messages]
    return [{"role": "user", "content": row["prompt"]}]
