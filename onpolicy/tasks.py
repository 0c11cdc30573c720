"""The embedded tasks: generated prompts with checkable answers, for the tiny CPU default (no download).

    arith    "37+5="  -> "42"      addition of two numbers in [0, ARITH_MAX)
    reverse  "R4071=" -> "1704"    reverse 3 or 4 digits (DIGITS_RANGE); the tiny CPU default
    sort     "S4071=" -> "0147"    sort 3 or 4 digits ascending
    guess    "guess 0-9" -> "7"    a secret number in [0, GUESS_MAX), found over several turns with the
                                   `guess` environment (onpolicy.envs.guess); single-turn, a one-in-ten shot

`make_examples(task, num, seed)` returns `[{"prompt": str, "answer": str}, ...]`, deterministic in `seed`.
`score(completion, answer)` is the reward: 1.0 when the completion, cut at the first newline (or EOS, which
the tokenizer's decode drops), stripped of spaces, equals the answer; else 0.0. `embedded_reward` applies it
to batches; `onpolicy.rewards` registers it as the reward "embedded" (this module imports no onpolicy code).
Completions are answers alone (no chat template).
Left out: partial credit, multi-step reasoning, curriculum.
"""
from __future__ import annotations

import random

ARITH_MAX = 50
DIGITS_RANGE = (3, 4)  # digit-string lengths of reverse / sort
GUESS_MAX = 10
TASKS = ("arith", "reverse", "sort", "guess")
# Characters any embedded prompt or answer may use (the tiny CharTokenizer must cover them).
CHARSET = "0123456789+=RS\ngues -"


def _arith(rng: random.Random) -> dict:
    a, b = rng.randrange(ARITH_MAX), rng.randrange(ARITH_MAX)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def _digits(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(*DIGITS_RANGE)))


def _reverse(rng: random.Random) -> dict:
    d = _digits(rng)
    return {"prompt": f"R{d}=", "answer": d[::-1]}


def _sort(rng: random.Random) -> dict:
    d = _digits(rng)
    return {"prompt": f"S{d}=", "answer": "".join(sorted(d))}


def _guess(rng: random.Random) -> dict:
    return {"prompt": f"guess 0-{GUESS_MAX - 1}", "answer": str(rng.randrange(GUESS_MAX))}


_GENERATORS = {"arith": _arith, "reverse": _reverse, "sort": _sort, "guess": _guess}


def check_task(task: str) -> str:
    if task not in _GENERATORS:
        raise ValueError(f"embedded task must be one of {', '.join(TASKS)}; got {task!r} "
                         f"(use data.dataset: 'embedded:<task>')")
    return task


def make_examples(task: str, num: int, seed: int = 0) -> list[dict]:
    """`num` examples of `task`, reproducible from `seed` (prompt-answer pairs may repeat)."""
    check_task(task)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num (data.num_examples) must be a positive int; got {num!r}")
    rng = random.Random(f"{task}:{seed}")
    gen = _GENERATORS[task]
    return [gen(rng) for _ in range(num)]


def extract_answer(completion: str) -> str:
    return completion.split("\n", 1)[0].strip()


def score(completion: str, answer: str) -> float:
    return 1.0 if extract_answer(completion) == str(answer).strip() else 0.0


def embedded_reward(prompts: list[str], completions: list[str], answer: list | None = None, **_: object) -> list[float]:
    """TRL-style reward: exact match of the `answer` column (see `score`), one float per completion."""
    if answer is None or len(answer) != len(completions):
        raise ValueError("embedded reward: needs the data column `answer` with one entry per completion; got "
                         f"{None if answer is None else len(answer)} for {len(completions)} completions")
    return [score(c, a) for c, a in zip(completions, answer)]
