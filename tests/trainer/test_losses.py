"""Policy loss vs a per-token Python loop (values and gradients), clipping, masking, k3 KL, TIS, bad input."""
import math

import pytest
import torch

from onpolicy.trainer.losses import default_loss_agg, policy_loss, truncated_is_weights


def _loop_loss(lp, old, adv, lens, el, eh, agg, max_tokens=None, mask=None, beta=0.0, ref=None, w=None):
    """Straightforward per-token reference on Python floats / scalar tensors."""
    per_seq, all_tok, pos = [], [], 0
    for b, n in enumerate(lens):
        toks = []
        for t in range(pos, pos + n):
            if mask is not None and not mask[t]:
                continue
            ratio = torch.exp(lp[t] - old[t])
            a = adv[b]
            pg = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - el, 1 + eh) * a)
            if w is not None:
                pg = pg * w[t]
            if beta:
                d = ref[t] - lp[t]
                pg = pg + beta * (torch.exp(d) - d - 1)
            toks.append(pg)
        pos += n
        all_tok += toks
        if toks:
            per_seq.append(sum(toks) / len(toks))
    if agg == "sequence":
        return sum(per_seq) / len(per_seq)
    if agg == "token":
        return sum(all_tok) / len(all_tok)
    return sum(all_tok) / (len(lens) * max_tokens)


def _batch(seed=0, lens=(3, 5, 1, 4)):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    lp = (-torch.rand(total, generator=gen) * 2).requires_grad_(True)
    old = (lp.detach() + (torch.rand(total, generator=gen) - 0.5) * 0.8)
    adv = torch.randn(len(lens), generator=gen)
    return lp, old, adv, list(lens)


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28)])
def test_matches_loop_values_and_grads(agg, eps):
    lp, old, adv, lens = _batch()
    out = policy_loss(lp, old, adv, lens, epsilon_low=eps[0], epsilon_high=eps[1], agg=agg, max_tokens=6)
    (g,) = torch.autograd.grad(out.loss, lp)
    lp2 = lp.detach().clone().requires_grad_(True)
    ref = _loop_loss(lp2, old, adv, lens, eps[0], eps[1], agg, max_tokens=6)
    (g2,) = torch.autograd.grad(ref, lp2)
    torch.testing.assert_close(out.loss.detach(), ref.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, g2, atol=1e-6, rtol=1e-5)
    assert 0.0 < out.clip_frac < 1.0  # the random ratios straddle the clip range


def test_on_policy_ratio_one_gives_policy_gradient():
    """old == lp bitwise (the invariant case): loss = -mean(A), grad = -A_b / len_b / B (REINFORCE)."""
    lp, _, adv, lens = _batch(1)
    out = policy_loss(lp, lp.detach().clone(), adv, lens, agg="sequence")
    assert out.ratio_mean == 1.0 and out.clip_frac == 0.0
    (g,) = torch.autograd.grad(out.loss, lp)
    expect = torch.cat([torch.full((n,), -float(a) / n / len(lens)) for a, n in zip(adv, lens)])
    torch.testing.assert_close(g, expect)
    torch.testing.assert_close(out.loss.detach(), -adv.mean())


def test_clipping_zeroes_gradient_outside_trust_region():
    lp = torch.zeros(4, requires_grad=True)
    old = torch.tensor([-1.0, 1.0, -1.0, 1.0])  # ratios e, 1/e, e, 1/e
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = policy_loss(lp, old, adv, [1, 1, 1, 1], agg="token")
    (g,) = torch.autograd.grad(out.loss, lp)
    # A>0 & ratio>1+eps clipped; A<0 & ratio<1-eps clipped; the other two keep their gradient.
    assert g[0] == 0 and g[3] == 0 and g[1] != 0 and g[2] != 0
    assert out.clip_frac == 0.5


def test_mask_excludes_tokens_and_whole_sequences():
    lp, old, adv, lens = _batch(2)
    mask = torch.ones(sum(lens), dtype=torch.bool)
    mask[3:8] = False  # the whole second completion (overlong filtering)
    mask[0] = False
    for agg in ("sequence", "token", "constant"):
        out = policy_loss(lp, old, adv, lens, agg=agg, max_tokens=5, loss_mask=mask)
        (g,) = torch.autograd.grad(out.loss, lp)
        assert torch.equal(g[~mask], torch.zeros(int((~mask).sum())))
        ref = _loop_loss(lp, old, adv, lens, 0.2, 0.2, agg, max_tokens=5, mask=mask)
        torch.testing.assert_close(out.loss.detach(), ref.detach(), atol=1e-6, rtol=1e-5)
        assert out.num_tokens == int(mask.sum())
    none = policy_loss(lp, old, adv, lens, loss_mask=torch.zeros_like(mask))
    assert none.loss.item() == 0.0 and none.num_tokens == 0


def test_k3_kl_penalty():
    lp, old, adv, lens = _batch(3)
    same = policy_loss(lp, old, adv, lens, beta=0.5, ref_logprobs=lp.detach().clone())
    base = policy_loss(lp, old, adv, lens)
    assert same.kl_ref == 0.0 and same.loss.item() == pytest.approx(base.loss.item())
    ref = lp.detach() - 0.3
    out = policy_loss(lp, old, adv, lens, beta=0.5, ref_logprobs=ref, agg="token")
    k3 = math.exp(-0.3) + 0.3 - 1
    assert out.kl_ref == pytest.approx(k3, rel=1e-5)
    loop = _loop_loss(lp, old, adv, lens, 0.2, 0.2, "token", beta=0.5, ref=ref)
    torch.testing.assert_close(out.loss.detach(), loop.detach(), atol=1e-6, rtol=1e-5)


def test_tis_weights_scale_the_pg_term():
    lp, old, adv, lens = _batch(4)
    w = truncated_is_weights(lp, old, cap=1.5)
    assert not w.requires_grad and w.max() <= 1.5
    torch.testing.assert_close(w, torch.exp(lp.detach() - old).clamp(max=1.5))
    out = policy_loss(lp, old, adv, lens, agg="token", is_weights=w)
    loop = _loop_loss(lp, old, adv, lens, 0.2, 0.2, "token", w=w)
    torch.testing.assert_close(out.loss.detach(), loop.detach(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="tis_cap"):
        truncated_is_weights(lp, old, cap=0.0)


def test_default_aggs():
    assert default_loss_agg("grpo") == "sequence"
    assert default_loss_agg("dapo") == "token"
    assert default_loss_agg("dr_grpo") == "constant"
    assert default_loss_agg("rloo") == "sequence"
    with pytest.raises(ValueError, match="algo must be one of"):
        default_loss_agg("ppo")


def test_bad_input():
    lp, old, adv, lens = _batch(5)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(lp, old, adv, lens, agg="mean")
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss(lp, old[:-1], adv, lens)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, old, adv[:-1], lens)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, old, adv, lens, beta=0.1)
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(lp, old, adv, lens, agg="constant")
    with pytest.raises(ValueError, match="epsilon"):
        policy_loss(lp, old, adv, lens, epsilon_low=1.5)


# ---- whole-batch normalisers: micro-batched loss == unsplit loss -------------------------------------------

from onpolicy.trainer.advantages import group_advantages  # noqa: E402
from onpolicy.algorithms import ALGO_DEFAULTS, ALGOS  # noqa: E402
from onpolicy.trainer.losses import LossAccumulator, loss_weights, slice_loss  # noqa: E402
from onpolicy.trainer.microbatch import token_spans  # noqa: E402
from onpolicy.trainer.parity import OnPolicyViolation  # noqa: E402

GROUP = 4
LENS = [3, 5, 1, 4, 7, 2, 6, 3]  # two groups of four completions


def _split_case(algo, masked, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(LENS)
    lp = -torch.rand(total, generator=gen) * 2
    old = lp + (torch.rand(total, generator=gen) - 0.5) * 0.8  # ratios straddle the clip range
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.25])
    adv = group_advantages(rewards, GROUP, algo)
    mask = None
    if masked:
        mask = torch.ones(total, dtype=torch.bool)
        mask[3:8] = False   # the whole second completion (overlong filtering)
        mask[0] = False
        mask[-4:-1] = False
    kw = dict(epsilon_low=0.2, epsilon_high=ALGO_DEFAULTS[algo]["epsilon_high"], agg=default_loss_agg(algo),
              max_tokens=7)
    return lp, old, adv, mask, kw


def _micro(seqs_per_micro):
    n = len(LENS)
    k = n if seqs_per_micro == "all" else seqs_per_micro
    return token_spans(LENS, [range(a, min(a + k, n)) for a in range(0, n, k)])


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seqs_per_micro", [1, 3, "all"])
@pytest.mark.parametrize("extras", [False, True])
def test_micro_batched_loss_and_grads_equal_unsplit_bitwise(algo, masked, seqs_per_micro, extras):
    lp, old, adv, mask, kw = _split_case(algo, masked)
    more = {}
    if extras:  # k3 to a reference and truncated-IS weights ride along per token
        more = dict(beta=0.1, ref_logprobs=lp - 0.3, is_weights=truncated_is_weights(lp, old, 1.2))
    full_lp = lp.clone().requires_grad_(True)
    full = policy_loss(full_lp, old, adv, LENS, loss_mask=mask, **kw, **more)
    full.loss.backward()

    split_lp = lp.clone().requires_grad_(True)
    w = loss_weights(adv, LENS, agg=kw["agg"], max_tokens=kw["max_tokens"], loss_mask=mask)
    acc = LossAccumulator()
    for span in _micro(seqs_per_micro):
        s = slice(span.start, span.stop)
        sliced = {k: (v[s] if isinstance(v, torch.Tensor) else v) for k, v in more.items()}
        part = slice_loss(split_lp[s], old[s], w.slice(span), epsilon_low=kw["epsilon_low"],
                          epsilon_high=kw["epsilon_high"], **sliced)
        part.loss.backward()
        acc.add(part)
    got = acc.result()
    assert got.loss == full.loss.item()  # bitwise: one sum over the same per-token terms
    assert torch.equal(split_lp.grad, full_lp.grad)
    assert (got.pg_loss, got.kl_ref, got.clip_frac, got.ratio_mean, got.num_tokens) == (
        full.pg_loss, full.kl_ref, full.clip_frac, full.ratio_mean, full.num_tokens)
    assert 0.0 < got.clip_frac < 1.0  # the clip does real work here


def test_weights_come_from_the_whole_batch():
    """A micro-batch's own normaliser would differ: its weights must be the whole batch's slice."""
    _, _, adv, mask, _ = _split_case("dapo", masked=True)
    w = loss_weights(adv, LENS, agg="token", loss_mask=mask)
    head = w.slice(range(0, 8))
    assert head.num_tokens == int(mask.sum())
    torch.testing.assert_close(head.weights, mask[:8].float() / int(mask.sum()))
    seq = loss_weights(adv, LENS, agg="sequence", loss_mask=mask)
    # the masked-out second completion is not counted among the completions
    torch.testing.assert_close(seq.weights.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="contiguous range"):
        w.slice(range(0, 100))


def test_first_update_verifies_ratio_exactly_one():
    lp, _, adv, _, kw = _split_case("grpo", masked=False)
    lp.requires_grad_(True)
    out = policy_loss(lp, lp.detach().clone(), adv, LENS, check_on_policy=True, **kw)
    assert out.ratio_mean == 1.0 and out.clip_frac == 0.0
    old = lp.detach().clone()
    old[5] = torch.nextafter(old[5], torch.tensor(0.0))  # one ulp off on one token
    with pytest.raises(OnPolicyViolation, match=r"exactly 1.0 .* 1/\d+ tokens differ"):
        policy_loss(lp, old, adv, LENS, check_on_policy=True, **kw)
    policy_loss(lp, old, adv, LENS, **kw)  # later updates: no check
