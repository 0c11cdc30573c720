"""Sampling: the counter-based hash against a pure-Python splitmix64, batch invariance of the sampled tokens,
top-k / top-p filtering against a per-row reference, and that the sampler draws from the right distribution."""
import math

import pytest
import torch

from onpolicy.engine.sampling import filter_top_k_top_p, sample_tokens
from onpolicy.kernels.sampling import row_keys, splitmix64, uniform_noise

MASK = (1 << 64) - 1


def _py_splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= (1 << 63) else u


def test_splitmix64_matches_python_reference():
    vals = [0, 1, 2, 12345, -1, -(1 << 63), (1 << 63) - 1, 0x0123456789ABCDEF]
    got = splitmix64(torch.tensor(vals, dtype=torch.int64)).tolist()
    assert got == [_signed(_py_splitmix64(v & MASK)) for v in vals]


def test_uniform_noise_range_and_row_independence():
    keys = row_keys(torch.tensor([1, 2, 3, 1]), torch.tensor([0, 0, 1, 0]), torch.tensor([5, 5, 5, 6]))
    u = uniform_noise(keys, 1000)
    assert u.dtype == torch.float64 and bool((u > 0).all()) and bool((u < 1).all())
    for i in range(4):
        assert torch.equal(uniform_noise(keys[i : i + 1], 1000)[0], u[i])
    # different (seed, index, position) -> different streams; roughly uniform mean
    assert not torch.equal(u[0], u[3]) and not torch.equal(u[0], u[2])
    assert abs(float(u.mean()) - 0.5) < 0.02


def _rows(m, vocab, gen):
    return torch.randn(m, vocab, generator=gen) * 3


def _args(m, greedy_every=0):
    idx = torch.arange(m)
    return dict(
        greedy=(idx % greedy_every == 0) if greedy_every else torch.zeros(m, dtype=torch.bool),
        top_k=torch.where(idx % 3 == 1, 5, -1),
        top_p=torch.where(idx % 4 == 2, 0.8, 1.0).double(),
        seeds=1000 + idx, sample_index=idx % 2, positions=idx * 7,
    )


@pytest.mark.parametrize("m", [1, 3, 33, 70])
def test_sample_tokens_batch_invariant(m):
    gen = torch.Generator().manual_seed(m)
    vocab = 257
    logits = _rows(70, vocab, gen)
    args = _args(70, greedy_every=5)
    full = sample_tokens(logits, **args)
    perm = torch.randperm(70, generator=gen)[:m]
    sub = sample_tokens(logits[perm], **{k: v[perm] for k, v in args.items()})
    assert torch.equal(sub, full[perm])


def test_greedy_lowest_index_on_ties():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    args = {k: v[:2] for k, v in _args(2).items()}
    args["greedy"] = torch.ones(2, dtype=torch.bool)
    assert sample_tokens(logits, **args).tolist() == [1, 0]


def _reference_filter(logp_row, k, p):
    order = sorted(range(len(logp_row)), key=lambda i: -logp_row[i])
    keep = set(order)
    if k > 0:
        kth = logp_row[order[k - 1]]
        keep = {i for i in order if logp_row[i] >= kth}
    if p < 1:
        probs = {i: math.exp(logp_row[i]) for i in keep}
        total = sum(probs.values())
        cum, nucleus = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            if cum >= p * total and nucleus:
                break
            nucleus.add(i)
            cum += probs[i]
        keep = nucleus
    return keep


def test_filter_top_k_top_p_matches_reference():
    gen = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(24, 50, generator=gen) * 2, -1)
    ks = torch.tensor([-1, 1, 3, 10, -1, 50] * 4)
    ps = torch.tensor([1.0, 1.0, 0.5, 0.9, 0.3, 0.999] * 4, dtype=torch.float64)
    out = filter_top_k_top_p(logp, ks, ps)
    for r in range(24):
        kept = set(torch.isfinite(out[r]).nonzero()[:, 0].tolist())
        assert kept == _reference_filter(logp[r].tolist(), int(ks[r]), float(ps[r])), r
        assert torch.equal(out[r][list(kept)], logp[r][list(kept)])


def test_sampler_follows_the_distribution():
    """Over many seeds, token frequencies match softmax(logits) (a wrong noise or sign would fail this)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    n = 4000
    args = dict(greedy=torch.zeros(n, dtype=torch.bool), top_k=torch.full((n,), -1), top_p=torch.ones(n).double(),
                seeds=torch.arange(n), sample_index=torch.zeros(n, dtype=torch.long), positions=torch.zeros(n, dtype=torch.long))
    tokens = sample_tokens(logits.expand(n, 5).contiguous(), **args)
    freq = torch.bincount(tokens, minlength=5).double() / n
    want = torch.softmax(logits[0].double(), -1)
    assert float((freq - want).abs().max()) < 0.03, (freq, want)
    # top-k 2 restricts to the two best tokens, in proportion
    args["top_k"] = torch.full((n,), 2)
    tokens = sample_tokens(logits.expand(n, 5).contiguous(), **args)
    assert set(tokens.tolist()) == {0, 1}
    assert abs(float((tokens == 0).double().mean()) - math.e / (math.e + 1)) < 0.03
