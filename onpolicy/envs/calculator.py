"""The built-in `calculator` environment: a tool for math word problems in the Qwen-style tool-call format.

The model calls the tool by writing `<tool_call>{"name": "calculator", "arguments": {"expression": "3*(4+5)"}}
</tool_call>` (the format Qwen2.5 / Qwen3 chat templates teach when given `tools=`); the environment answers
each call with a `tool` message holding the value or `error: ...`. A turn without a tool call is the final
answer: the trajectory ends there (reward 0 from the environment; score the answer with a reward function,
e.g. `math_answer`) -- unless `nudge` is set: then the user answers with that text and the trajectory goes on
(until env.max_turns). Set `env.stop: ["</tool_call>"]` so a turn ends right after its call.
Expressions are evaluated with `ast` (never `eval`): numbers, + - * / // % **, unary signs and parentheses;
exponents up to 64, results up to 1e15 in magnitude, expressions up to 200 characters.
Left out: variables, functions (sqrt, ...), several tools.
"""
from __future__ import annotations

import ast
import json
import operator
import re

from onpolicy.envs.base import row_messages

MAX_EXPRESSION_CHARS, MAX_EXPONENT, MAX_MAGNITUDE = 200, 64, 1e15
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression (numbers, + - * / // % ** and parentheses).",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string",
                                                                       "description": "e.g. 3*(4+5)"}},
                       "required": ["expression"]},
    },
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _value(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
            raise ValueError("result out of range")
        return result
    raise ValueError(f"unsupported syntax {type(node).__name__}")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; ValueError (or ZeroDivisionError) for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    return _value(tree.body)


def format_value(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(round(value, 10)) if isinstance(value, float) else str(value)


def tool_calls(text: str) -> list[str | dict]:
    """The calls in a turn: each a dict {"name", "arguments"}, or the error text of a malformed one."""
    out: list[str | dict] = []
    for body in TOOL_CALL.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            out.append("error: the tool call is not valid JSON")
            continue
        args = call.get("arguments") if isinstance(call, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict):
            out.append('error: a tool call needs {"name": ..., "arguments": {...}}')
            continue
        out.append({"name": call.get("name"), "arguments": args})
    return out


def run_call(call: str | dict) -> str:
    if isinstance(call, str):
        return call
    if call["name"] != "calculator":
        return f"error: unknown tool {call['name']!r}; the tool is 'calculator'"
    try:
        return format_value(evaluate(call["arguments"].get("expression")))
    except (ValueError, ZeroDivisionError, OverflowError, TypeError) as e:
        return f"error: {e}"


class Calculator:
    """One trajectory's calculator (see the module doc). `system_prompt`: put first when the row has none;
    `nudge`: the user's reply to a turn without a tool call (None: such a turn ends the trajectory)."""

    tools = [CALCULATOR_TOOL]

    def __init__(self, system_prompt: str | None = None, nudge: str | None = None):
        self.system_prompt, self.nudge = system_prompt, nudge
        self.calls = 0

    def reset(self, row: dict) -> list[dict]:
        messages = row_messages(row)
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def step(self, turn):
        calls = tool_calls(turn)
        if not calls:
            return ([], 0.0, True) if self.nudge is None else ([{"role": "user", "content": self.nudge}], 0.0, False)
        self.calls += len(calls)
        return [{"role": "tool", "content": run_call(c)} for c in calls], 0.0, False
