"""Reward registry, math_answer / format rewards, combine_rewards."""
import pytest

from onpolicy.config import RewardArgs
from onpolicy.rewards import available_rewards, combine_rewards, get_reward, register_reward
from onpolicy.rewards.math_answer import extract_answer, last_boxed, to_number


@pytest.mark.parametrize("completion, answer, strict, lenient", [
    ("... so she has 72 apples.\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", 1.0, 1.0),  # GSM8K gold
    ("#### 1,234", "1234", 1.0, 1.0),
    ("#### 72.0", "72", 1.0, 1.0),
    ("#### 72.50", "72.5", 1.0, 1.0),
    ("#### $18.", "18", 1.0, 1.0),
    ("#### -5", "-5", 1.0, 1.0),
    ("#### 5", "-5", 0.0, 0.0),
    ("#### 3/4", "0.75", 1.0, 1.0),
    ("The answer is \\boxed{\\frac{3}{4}}.", "3/4", 1.0, 1.0),
    ("\\boxed{-\\dfrac{1}{2}}", "-0.5", 1.0, 1.0),
    ("\\boxed{\\text{7}}", "7", 1.0, 1.0),
    ("\\boxed{{12}} then #### 13", "13", 1.0, 1.0),     # the last marked answer counts
    ("#### 13\n\\boxed{{12}}", "12", 1.0, 1.0),
    ("#### 13\n\\boxed{12}", "13", 0.0, 0.0),
    ("answer: 42", "42", 0.0, 1.0),                      # last-number fallback only in the lenient one
    ("I think 41 or 42", "42", 0.0, 1.0),
    ("no number at all", "42", 0.0, 0.0),
    ("#### 1,23", "123", 0.0, 0.0),                      # not a thousands separator
    ("\\boxed{x + 1}", "x+1", 1.0, 1.0),                 # non-numeric: whitespace-insensitive text match
    ("#### 42", None, 0.0, 0.0),                         # no reference answer
])
def test_math_answer(completion, answer, strict, lenient):
    assert get_reward("math_answer")(["q"], [completion], answer=[answer]) == [strict]
    assert get_reward("math_answer_lenient")(["q"], [completion], answer=[answer]) == [lenient]


def test_extraction_helpers():
    assert last_boxed("\\boxed{a{b}c} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_answer("#### 7 apples\nmore") == "7 apples"
    assert to_number("1,000,000") == 1_000_000 and to_number("abc") is None and to_number("1/0") is None


def test_math_answer_needs_answer_column():
    with pytest.raises(ValueError, match="answer"):
        get_reward("math_answer")(["q"], ["#### 1"])
    with pytest.raises(ValueError, match="differ in length"):
        get_reward("math_answer")(["q"], ["#### 1"], answer=["1", "2"])


@pytest.mark.parametrize("completion, ok", [
    ("so #### 12", 1.0), ("\\boxed{3}", 1.0), ("\\boxed{}", 0.0), ("####", 0.0), ("12", 0.0), ("# 12", 0.0),
])
def test_format(completion, ok):
    assert get_reward("format")(["q"], [completion]) == [ok]


def test_registry():
    assert {"math_answer", "math_answer_lenient", "format", "embedded"} <= set(available_rewards())

    @register_reward("test_len")
    def test_len(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    assert get_reward("test_len") is test_len
    with pytest.raises(ValueError, match="already taken"):
        register_reward("test_len")(lambda prompts, completions, **kw: [0.0] * len(completions))
    with pytest.raises(ValueError, match="unknown reward name 'nope'; registered: .*math_answer"):
        get_reward("nope")


def test_combine_rewards_weights_and_columns():
    prompts = ["1+2=", "1+2=", "3+4="]
    completions = ["3\n", "#### 4", "#### 7"]
    total, per = combine_rewards([RewardArgs("math_answer", 1.0), RewardArgs("format", 0.5)], prompts, completions,
                                 answer=["3", "3", "7"], extra_column=[1, 2, 3])
    assert per == {"math_answer": [0.0, 0.0, 1.0], "format": [0.0, 1.0, 1.0]}
    assert total == [0.0, 0.5, 1.5]


def test_embedded_reward_through_combine():
    total, per = combine_rewards([RewardArgs("embedded")], ["1+2=", "1+2="], ["3\n", "4"], answer=["3", "3"])
    assert total == [1.0, 0.0] and per == {"embedded": [1.0, 0.0]}


def test_combine_rewards_bad_input():
    r = [RewardArgs("format")]
    with pytest.raises(ValueError, match="prompts .* and completions .* must have equal length"):
        combine_rewards(r, ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="column 'answer' must be a list of length 2"):
        combine_rewards(r, ["a", "b"], ["b", "c"], answer=["x"])
    with pytest.raises(ValueError, match=r"rewards\[0\].name: .*unknown reward name 'bogus'"):
        combine_rewards([RewardArgs("bogus")], ["a"], ["b"])

    @register_reward("test_bad_output")
    def bad(prompts, completions, **kwargs):
        return ["1"] * len(completions)

    with pytest.raises(ValueError, match="reward 'test_bad_output' returned '1'; every value must be a finite float"):
        combine_rewards([RewardArgs("test_bad_output")], ["a"], ["b"])


def test_rewards_and_tasks_import_one_way():
    """tasks defines the embedded reward without importing rewards; rewards registers every built-in from one table."""
    import subprocess
    import sys

    code = ("import sys, onpolicy.tasks; assert 'onpolicy.rewards' not in sys.modules, 'tasks imports rewards'; "
            "from onpolicy.rewards.registry import get_reward; import onpolicy.rewards as r; "
            "assert set(r.BUILTIN_REWARDS) <= set(r.available_rewards()); "
            "assert get_reward('embedded') is onpolicy.tasks.embedded_reward")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
