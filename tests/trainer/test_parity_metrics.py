"""Sampler/trainer parity metrics: exact zeros on equal inputs, and a one-ulp difference is caught."""
import pytest
import torch

from onpolicy.trainer.parity import PARITY_KEYS, first_mismatch, mismatch_report, parity_metrics


def _seqs():
    gen = torch.Generator().manual_seed(0)
    return [-torch.rand(n, generator=gen) * 3 for n in (5, 1, 9, 0, 3)]


def test_equal_is_exactly_zero():
    s = _seqs()
    t = [x.clone() for x in s]
    m = parity_metrics(s, t)
    assert set(m) == set(PARITY_KEYS)
    assert all(v == 0.0 for v in m.values()), m
    assert first_mismatch(s, t) is None


def test_one_ulp_is_caught():
    s = _seqs()
    t = [x.clone() for x in s]
    t[2][4] = torch.nextafter(t[2][4], torch.tensor(0.0))  # one ulp toward zero
    m = parity_metrics(s, t)
    total = sum(x.numel() for x in s)
    assert m["onpolicy/mismatch_frac"] == pytest.approx(1 / total)
    assert m["onpolicy/logprob_diff/max"] > 0.0
    assert m["onpolicy/kl"] < 0.0  # sampler - trainer, trainer moved toward zero (larger)
    mm = first_mismatch(s, t)
    assert (mm.sequence, mm.token, mm.num_mismatched, mm.num_tokens) == (2, 4, 1, total)
    report = mismatch_report(mm, step=7)
    assert "step 7" in report and "sequence 2" in report and "scripts.doctor" in report


def test_metric_values():
    s = [torch.tensor([-1.0, -2.0]), torch.tensor([-3.0])]
    t = [torch.tensor([-1.5, -2.0]), torch.tensor([-2.0])]
    m = parity_metrics(s, t)
    assert m["onpolicy/kl"] == pytest.approx((0.5 + 0.0 - 1.0) / 3)
    assert m["onpolicy/logprob_diff/max"] == pytest.approx(1.0)
    assert m["onpolicy/logprob_diff/mean"] == pytest.approx(0.5)
    assert m["onpolicy/mismatch_frac"] == pytest.approx(2 / 3)


def test_nan_counts_as_mismatch():
    s = [torch.tensor([-1.0, float("nan")])]
    t = [torch.tensor([-1.0, float("nan")])]
    assert parity_metrics(s, t)["onpolicy/mismatch_frac"] == 0.5
    assert first_mismatch(s, t).token == 1


def test_shape_errors():
    with pytest.raises(ValueError, match="sequences"):
        parity_metrics([torch.zeros(2)], [])
    with pytest.raises(ValueError, match="sequence 0"):
        parity_metrics([torch.zeros(2)], [torch.zeros(3)])
