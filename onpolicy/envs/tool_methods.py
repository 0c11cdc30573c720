"""The built-in `tool_methods` environment: a TRL-style environment class whose public methods are its tools.

TRL's `GRPOTrainer(environment_factory=MyEnv)` takes a class with `reset()` and public methods the model calls
as tools (schemas from their signatures and docstrings). Name such a class here and it runs unchanged:

    env: {name: tool_methods, kwargs: {cls: "mypkg.envs:MyEnv"}, stop: ["</tool_call>"]}

One `cls` instance per trajectory (`init`: its constructor's keyword arguments); `reset` gets the row's columns
its signature takes (all of them with `**kwargs`, none with no parameters). The prompt is the row's own (its
chat messages or text). Each turn's `<tool_call>` JSON calls (`onpolicy.envs.calculator.tool_calls`) run the
named methods; their results (or `error: ...`) come back as `tool` messages; a turn without a call ends the
trajectory. The tool schemas (`transformers.utils.get_json_schema`, docstrings with an `Args:` section) go to
the chat template. Left out: TRL's `environments` argument of reward functions (the step reward is 0; score the
final answer with a reward function), async methods.
"""
from __future__ import annotations

import inspect

from onpolicy.envs.base import row_messages
from onpolicy.envs.calculator import tool_calls


class ToolMethods:
    def __init__(self, cls, init: dict | None = None):
        if isinstance(cls, str):
            from onpolicy.rewards.sources import import_object

            cls = import_object(cls, kind="Class")
        self.inner = cls(**(init or {}))
        self.methods = {name: getattr(self.inner, name) for name in dir(self.inner)
                        if not name.startswith("_") and name != "reset" and callable(getattr(self.inner, name))}
        from transformers.utils import get_json_schema

        self.tools = [get_json_schema(m) for m in self.methods.values()]

    def reset(self, row: dict) -> list[dict]:
        reset = getattr(self.inner, "reset", None)
        if reset is not None:
            params = inspect.signature(reset).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                reset(**row)
            else:
                reset(**{p.name: row[p.name] for p in params if p.name in row})
        return row_messages(row)

    def _call(self, call) -> str:
        if isinstance(call, str):
            return call
        method = self.methods.get(call["name"])
        if method is None:
            return f"error: unknown tool {call['name']!r}; the tools are {', '.join(sorted(self.methods))}"
        try:
            return str(method(**call["arguments"]))
        except Exception as e:  # noqa: BLE001 -- a tool's failure is the model's to see, as in TRL
            return f"error: {type(e).__name__}: {e}"

    def step(self, turn):
        calls = tool_calls(turn)
        if not calls:
            return [], 0.0, True
        return [{"role": "tool", "content": self._call(c)} for c in calls], 0.0, False
