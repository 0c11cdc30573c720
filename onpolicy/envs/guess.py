"""The built-in `guess` environment: guess the secret number with "higher" / "lower" feedback.

The embedded task `embedded:guess` gives the rows (prompt `guess 0-9`, the secret as `answer`). A turn's guess
is the number it starts with (after spaces); the right number ends the trajectory with reward 1.0; otherwise
the user answers "higher" or "lower" (reward 0), or, for a turn that starts with no number, "number?" (reward
`no_number_reward`, -0.1 by default: a dense signal for the format that no strategy gains from).
With `env.stop: ["\\n"]` and a few tokens per turn the tiny CPU model learns it in a couple of minutes
(configs/tiny-cpu-multiturn.yaml). Left out: rewards for fewer turns (use a reward function on `turn_rewards`).
"""
from __future__ import annotations

import re

from onpolicy.envs.base import row_messages

NUMBER = re.compile(r"\s*(\d+)")


class Guess:
    def __init__(self, no_number_reward: float = -0.1):
        self.no_number_reward = no_number_reward

    def reset(self, row: dict) -> list[dict]:
        self.secret = int(row["answer"])
        return row_messages(row)

    def step(self, turn):
        number = NUMBER.match(turn)
        if number is None:
            return [{"role": "user", "content": "number?"}], self.no_number_reward, False
        guess = int(number.group(1))
        if guess == self.secret:
            return [], 1.0, True
        return [{"role": "user", "content": "higher" if guess < self.secret else "lower"}], 0.0, False
