"""The recipe scripts/bench_scale.py launches (`accelerate launch --module scripts.bench_scale_recipe`):
recipes/grpo.py plus the reward `bench_text_hash`.

`bench_text_hash` maps each completion's text to [0, 1) by CRC-32, so random-weight models of any size get
varied rewards, hence non-zero advantages and real updates, and the reward is a fixed function of the
completion, so run-to-run and world-size comparisons stay exact. Left out: any meaning (it is not a task).
"""
from __future__ import annotations

import runpy
import zlib
from pathlib import Path

from onpolicy.rewards.registry import register_reward

REPO = Path(__file__).resolve().parents[1]


@register_reward("bench_text_hash")
def text_hash(prompts: list[str], completions: list[str], **_) -> list[float]:
    return [zlib.crc32(c.encode()) / 2**32 for c in completions]


if __name__ == "__main__":
    runpy.run_path(str(REPO / "recipes/grpo.py"), run_name="__main__")
