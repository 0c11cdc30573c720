"""`math_answer`: 1.0 when the completion's final answer equals the reference numerically (else exact text).

Answer extraction: whichever comes last of the last `\\boxed{...}` (nested braces ok) and the last
`#### <answer>` line (the final answer is the last one marked);
`math_answer_lenient` also falls back to the last number in the text (off in `math_answer`: it rewards lucky
guesses). The reference goes through the same extraction, so a GSM8K solution ("... #### 72") works as is.
Numbers compare as exact fractions after normalisation: `$`, `,` thousands separators, spaces and a trailing
`.` dropped; `72.0 == 72`, `3/4 == 0.75`, `\\frac{3}{4}` and `-\\dfrac12` parse. Left out: symbolic equality
(`sqrt(2)`, `x+1`), units, percentages, scientific notation, intervals and sets.
"""
from __future__ import annotations

import re
from fractions import Fraction

from onpolicy.chat import completion_text


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def hash_answer(text: str) -> str | None:
    """Text after the last `####` up to the end of its line, else None."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    ans = text[idx + 4 :].strip().split("\n", 1)[0].strip()
    return ans or None


def extract_answer(text: str, last_number_fallback: bool = False) -> str | None:
    boxed, hashed = last_boxed(text), hash_answer(text)
    if boxed and hashed:
        return boxed if max(text.rfind("\\boxed{"), text.rfind("\\fbox{")) > text.rfind("####") else hashed
    if boxed or hashed:
        return boxed or hashed
    if last_number_fallback:
        nums = _NUMBER.findall(text)
        return nums[-1] if nums else None
    return None


def to_number(text: str) -> Fraction | None:
    """Exact value of a numeric answer string, or None when it is not a plain number/fraction."""
    s = text.strip().replace("$", "").replace("\\!", "").replace(" ", "").rstrip(".")
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    while s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.groups()
        s = f"{sign}{num}/{den}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)(/-?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    a, b = to_number(predicted), to_number(reference)
    if a is not None and b is not None:
        return a == b
    norm = lambda s: re.sub(r"\s+", "", s.strip().rstrip(".").strip("$")).lower()  # noqa: E731
    return norm(predicted) == norm(reference)


def _reference(answer) -> str | None:
    if answer is None:
        return None
    text = str(answer)
    return extract_answer(text) or text.strip() or None


def _score(completions: list, answer, fallback: bool) -> list[float]:
    """Completions as strings or as TRL's messages ([{"role": "assistant", "content": text}])."""
    if answer is None:
        raise ValueError("math_answer: needs the data column `answer` (set data.answer_column)")
    if len(answer) != len(completions):
        raise ValueError(f"math_answer: answer ({len(answer)}) and completions ({len(completions)}) differ in length")
    return [1.0 if answers_match(extract_answer(completion_text(c), fallback), _reference(a)) else 0.0
            for c, a in zip(completions, answer)]


def math_answer(prompts: list[str], completions: list[str], answer: list | None = None, **kwargs) -> list[float]:
    """1.0 when the boxed / `####` answer equals the reference answer, else 0.0."""
    return _score(completions, answer, fallback=False)


def math_answer_lenient(prompts: list[str], completions: list[str], answer: list | None = None,
                        **kwargs) -> list[float]:
    """As `math_answer`, but a completion without a marked answer is judged by its last number."""
    return _score(completions, answer, fallback=True)
