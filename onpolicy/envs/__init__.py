"""Environments for multi-turn and tool-using rollouts: the interface (`base`), names (`registry`), the
built-ins (`calculator`, `guess`, `tool_methods`: a TRL-style class of tool methods), the `env` config section
(`config`), the chat-template delta (`render`), the rollout loop over the engine (`rollout`), the trainer's
rollout source (`source`) and concurrent environment calls (`workers`). docs/environments.md is the user's
guide.
"""
from __future__ import annotations

from onpolicy.envs.base import EnvError, StepResult, Turn, row_messages
from onpolicy.envs.calculator import Calculator
from onpolicy.envs.guess import Guess
from onpolicy.envs.registry import available_envs, register_env, resolve_env
from onpolicy.envs.tool_methods import ToolMethods

__all__ = ["EnvError", "StepResult", "Turn", "row_messages", "available_envs", "register_env", "resolve_env",
           "BUILTIN_ENVS"]

BUILTIN_ENVS = {"calculator": Calculator, "guess": Guess, "tool_methods": ToolMethods}
for _name, _cls in BUILTIN_ENVS.items():
    register_env(_name)(_cls)
