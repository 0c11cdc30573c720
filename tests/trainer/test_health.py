"""Non-finite detection, the collapse warning and the NaN-aware summary (onpolicy.trainer.health/summary)."""
from types import SimpleNamespace

import pytest
import torch

from onpolicy.trainer.health import CollapseWatch, NonFiniteError, is_finite, no_signal_since
from onpolicy.trainer.summary import format_summary, max_abs, summarize


def test_is_finite_and_the_message():
    assert is_finite(1.5) and is_finite(torch.tensor([-1.0, 0.0]))
    for bad in (float("nan"), float("inf"), torch.tensor([0.0, float("-inf")]), torch.tensor([float("nan")])):
        assert not is_finite(bad)
    with pytest.raises(NonFiniteError, match=r"^step 3: x non-finite \(NaN or inf\); the update was not applied"):
        raise NonFiniteError(3, "x", {"loss": 1.0}, update=(1, 2))
    err = NonFiniteError(4, "loss", {"a": 1.0}, update=(2, 2))
    err.saved = "/ckpt/step-3/policy"
    assert str(err).startswith("step 4: loss (update 2 of 2; updates 1-1 were applied) non-finite")
    assert "last good policy (before step 4) is saved in /ckpt/step-3/policy" in str(err) and err.metrics == {"a": 1.0}


def _m(step, std=0.0, gnorm=0.0, reward=0.0):
    return {"step": step, "reward/mean": reward, "reward/std": std, "grad_norm": gnorm, "lr": 1e3,
            "completion/truncated_frac": 0.94}


def test_collapse_watch_warns_once_per_streak():
    w = CollapseWatch(lr=1e3)
    out = [w.update(m) for m in [_m(1, 0.5, 1.0), _m(2), _m(3), _m(4), _m(5), _m(6, 0.1, 0.2), _m(7), _m(8), _m(9)]]
    assert [i + 1 for i, o in enumerate(out) if o] == [4, 9]
    assert "no learning signal for 3 steps (2-4)" in out[3] and "94% truncated" in out[3]
    assert "trainer.lr 1000 too high" in out[3] and "solved" not in out[3]
    # zero variance alone (a solved batch with a non-zero KL term) is not a collapse
    assert all(CollapseWatch(lr=1.0).update(_m(i, 0.0, 0.3)) is None for i in range(1, 6))
    assert no_signal_since([_m(1, 0.5, 1.0), _m(2), _m(3), _m(4)]) == 2
    assert no_signal_since([_m(1), _m(2), _m(3, 0.5, 1.0)]) is None


def test_summary_is_nan_aware():
    parity = {"onpolicy/logprob_diff/max": 0.0, "onpolicy/mismatch_frac": 0.0}
    history = [{"step": 1, "reward/mean": 0.5, "onpolicy/kl": 0.0, **parity},
               {"step": 2, "reward/mean": 0.5, "onpolicy/kl": float("nan"), **parity},
               {"step": 3, "reward/mean": 0.5, "onpolicy/kl": -0.25, **parity}]
    run = SimpleNamespace(start_step=0, setup_time=0.0, cfg=SimpleNamespace(logging=SimpleNamespace(output_dir="o")))
    s = summarize(history, 1.0, run)
    assert s["max_abs_kl"] != s["max_abs_kl"] and s["nonfinite_steps"] == [2]  # NaN, not 0.0 or 0.25
    line = format_summary(s)
    assert "max |onpolicy/kl| nan" in line and "non-finite values at steps [2]" in line
    assert max_abs([0.0, -0.25]) == 0.25 and max_abs([]) == 0.0
