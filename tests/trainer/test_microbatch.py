"""Micro-batch planner (token budget, order, oversized sequences) and the mini-batch / iteration schedule."""
import pytest

from onpolicy.trainer.microbatch import (mini_batch_ranges, oversized, plan_micro_batches, token_spans,
                                         update_schedule)


def test_micro_batches_cover_in_order_within_budget():
    tokens = [5, 3, 7, 2, 2, 9, 1, 4]
    plan = plan_micro_batches(tokens, 10)
    assert plan == [range(0, 2), range(2, 4), range(4, 5), range(5, 7), range(7, 8)]
    assert [i for r in plan for i in r] == list(range(len(tokens)))
    assert all(sum(tokens[i] for i in r) <= 10 for r in plan)


def test_budget_edges():
    assert plan_micro_batches([4, 4, 4], 12) == [range(0, 3)]   # exactly full
    assert plan_micro_batches([4, 4, 4], 11) == [range(0, 2), range(2, 3)]
    assert plan_micro_batches([4, 4, 4], None) == [range(0, 3)]
    assert plan_micro_batches([], 8) == []


def test_oversized_sequence_is_alone():
    tokens = [3, 20, 2, 2, 25]
    plan = plan_micro_batches(tokens, 8)
    assert plan == [range(0, 1), range(1, 2), range(2, 4), range(4, 5)]
    assert oversized(tokens, 8) == [1, 4]
    assert oversized(tokens, None) == []


def test_planner_bad_input():
    with pytest.raises(ValueError, match="trainer.micro_batch_tokens"):
        plan_micro_batches([3, 4], 0)
    with pytest.raises(ValueError, match="trainer.micro_batch_tokens"):
        plan_micro_batches([3, 4], 2.5)
    with pytest.raises(ValueError, match=">= 1 token"):
        plan_micro_batches([3, 0], 8)


def test_mini_batches_and_iterations():
    assert mini_batch_ranges(8, 2) == [range(0, 4), range(4, 8)]
    sched = update_schedule(8, mini_batches=2, num_iterations=2)
    assert [(u.index, u.iteration, u.mini_batch, u.seqs) for u in sched] == [
        (0, 0, 0, range(0, 4)), (1, 0, 1, range(4, 8)), (2, 1, 0, range(0, 4)), (3, 1, 1, range(4, 8))]
    assert [u.on_policy for u in sched] == [True, False, False, False]
    assert [u.seqs for u in update_schedule(6)] == [range(0, 6)]
    with pytest.raises(ValueError, match=r"trainer.mini_batches \(4\) must divide"):
        update_schedule(6, mini_batches=4)
    with pytest.raises(ValueError, match="trainer.num_iterations"):
        update_schedule(6, num_iterations=0)


def test_token_spans():
    assert token_spans([3, 5, 1, 4], [range(0, 2), range(2, 4)]) == [range(0, 8), range(8, 13)]
    assert token_spans([3, 5], [range(1, 1)]) == [range(3, 3)]
    with pytest.raises(ValueError, match="outside"):
        token_spans([3, 5], [range(1, 3)])
