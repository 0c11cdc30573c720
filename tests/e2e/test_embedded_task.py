"""The embedded task: deterministic generation, checkable answers, the registered "embedded" reward."""
import pytest

from onpolicy import tasks


@pytest.mark.parametrize("task", tasks.TASKS)
def test_examples_are_deterministic_and_correct(task):
    a = tasks.make_examples(task, 50, seed=3)
    assert a == tasks.make_examples(task, 50, seed=3)
    assert a != tasks.make_examples(task, 50, seed=4)
    for ex in a:
        p, ans = ex["prompt"], ex["answer"]
        assert set(p + ans) <= set(tasks.CHARSET)
        if task == "guess":
            assert p == f"guess 0-{tasks.GUESS_MAX - 1}" and 0 <= int(ans) < tasks.GUESS_MAX
            continue
        assert p.endswith("=")
        body = p[1:-1] if task != "arith" else p[:-1]
        if task == "arith":
            x, y = body.split("+")
            assert int(ans) == int(x) + int(y) and 0 <= int(x) < tasks.ARITH_MAX
        elif task == "reverse":
            assert ans == body[::-1] and tasks.DIGITS_RANGE[0] <= len(body) <= tasks.DIGITS_RANGE[1]
        else:
            assert ans == "".join(sorted(body))


def test_score_and_registered_reward():
    from onpolicy.rewards import get_reward

    assert tasks.score("1704", "1704") == 1.0
    assert tasks.score(" 1704\njunk", "1704") == 1.0
    assert tasks.score("17040", "1704") == 0.0
    assert tasks.score("", "1704") == 0.0
    reward = get_reward("embedded")
    assert reward(["R4071="] * 2, ["1704", "1740"], answer=["1704", "1704"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        reward(["p"], ["c"])


def test_bad_task_and_sizes():
    with pytest.raises(ValueError, match="embedded task must be one of"):
        tasks.make_examples("chess", 3)
    with pytest.raises(ValueError, match="num"):
        tasks.make_examples("arith", 0)
