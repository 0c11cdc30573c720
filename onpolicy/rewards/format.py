"""`format`: 1.0 when the completion marks a final answer (`#### <answer>` or a non-empty `\\boxed{...}`).

Meant as a small-weight shaping term next to `math_answer`. Left out: checks on reasoning tags (`<think>`),
length penalties, and whether the marked answer is a number.
"""
from __future__ import annotations

from onpolicy.chat import completion_text
from onpolicy.rewards.math_answer import hash_answer, last_boxed


def has_marked_answer(text: str) -> bool:
    return bool(last_boxed(text)) or hash_answer(text) is not None


def format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """Completions as strings or as TRL's messages ([{"role": "assistant", "content": text}])."""
    return [1.0 if has_marked_answer(completion_text(c)) else 0.0 for c in completions]
