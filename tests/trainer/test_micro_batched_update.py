"""One update of a tiny model in micro-batches (the pieces together: planner, whole-batch loss weights,
activation checkpointing, fp32 master grads): for micro-batches of 1, 3 and all sequences the trainer logprobs
(hence the parity metrics) and the loss are bitwise the unsplit batch's; the parameter gradients agree within
fp32 tolerance (they are sums over tokens, and the split changes the order of those sums)."""
import pytest
import torch

from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny
from onpolicy.trainer.advantages import group_advantages
from onpolicy.algorithms import ALGO_DEFAULTS, ALGOS
from onpolicy.trainer.losses import LossAccumulator, default_loss_agg, loss_weights, slice_loss
from onpolicy.trainer.microbatch import plan_micro_batches, token_spans
from onpolicy.trainer.precision import MasterWeightAdamW

GROUP = 4
PROMPTS = [[5, 9, 12], [5, 9, 12], [5, 9, 12], [5, 9, 12], [7, 8, 20, 21], [7, 8, 20, 21], [7, 8, 20, 21],
           [7, 8, 20, 21]]
COMPLETIONS = [[30, 31, 32, 33, 34], [40, 41, 42], [50, 51], [60, 61, 62, 63, 64, 65, 66], [33, 34], [44],
               [55, 56, 57, 58], [66, 67, 68]]
REWARDS = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.25])
MAX_TOKENS = 7


def _mask():
    mask = torch.ones(sum(len(c) for c in COMPLETIONS), dtype=torch.bool)
    mask[5:8] = False  # the whole second completion (overlong filtering)
    mask[0] = False
    return mask


def _update(model, opt, algo, masked, micro: list[range], old=None):
    """Forward + backward per micro-batch, grads accumulated into opt's fp32 masters; -> (logprobs, loss stats)."""
    lens = [len(c) for c in COMPLETIONS]
    adv = group_advantages(REWARDS, GROUP, algo)
    w = loss_weights(adv, lens, agg=default_loss_agg(algo), max_tokens=MAX_TOKENS,
                     loss_mask=_mask() if masked else None)
    acc, lps = LossAccumulator(), []
    for seqs, span in zip(micro, token_spans(lens, micro)):
        lp = torch.cat(sequence_logprobs(model, PROMPTS[seqs.start:seqs.stop], COMPLETIONS[seqs.start:seqs.stop]))
        old_lp = lp.detach() if old is None else old[span.start:span.stop]
        part = slice_loss(lp, old_lp, w.slice(span), epsilon_high=ALGO_DEFAULTS[algo]["epsilon_high"],
                          check_on_policy=old is None)
        part.loss.backward()
        opt.accumulate_grads()
        acc.add(part)
        lps.append(lp.detach())
    return torch.cat(lps), acc.result()


def _micro(k) -> list[range]:
    n = len(PROMPTS)
    k = n if k == "all" else k
    return [range(a, min(a + k, n)) for a in range(0, n, k)]


def _grads(opt):
    return [m.grad.clone() for m in opt.masters]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("masked", [False, True])
def test_micro_batch_sizes_agree(algo, masked):
    model = build_tiny(seed=4, num_hidden_layers=2)[0].train()
    opt = MasterWeightAdamW(model.parameters(), lr=1e-3)
    ref_lp, ref_stats = _update(model, opt, algo, masked, _micro("all"))
    ref_grads = _grads(opt)
    for k in (1, 3):
        opt.zero_grad()
        lp, stats = _update(model, opt, algo, masked, _micro(k))
        assert torch.equal(lp, ref_lp)          # trainer logprobs: batch invariant, so parity metrics equal
        assert stats == ref_stats               # loss, pg_loss, clip_frac, ratio_mean: bitwise
        for g, ref in zip(_grads(opt), ref_grads):
            torch.testing.assert_close(g, ref, atol=1e-7, rtol=1e-5)


def test_later_update_clips_with_sampler_logprobs_as_old():
    """Update 2 onwards: old = the sampler's (= first update's) logprobs, so the ratio moves and the clip works."""
    model = build_tiny(seed=4, num_hidden_layers=2)[0].train()
    opt = MasterWeightAdamW(model.parameters(), lr=3e-2)
    sampler_lp, first = _update(model, opt, "dapo", False, _micro(3))
    assert first.ratio_mean == 1.0 and first.clip_frac == 0.0
    opt.step()
    opt.zero_grad()
    _, second = _update(model, opt, "dapo", False, _micro(3), old=sampler_lp)
    assert second.ratio_mean != 1.0 and second.clip_frac > 0.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_planned_micro_batches_with_checkpointing_bf16_masters(dtype):
    """Token-budget plan + activation checkpointing + fp32 master grads: same loss bits as one unsplit batch."""
    model = build_tiny(seed=5, num_hidden_layers=2, dtype=dtype)[0].train()
    opt = MasterWeightAdamW(model.parameters(), lr=1e-3)
    ref_lp, ref_stats = _update(model, opt, "grpo", True, _micro("all"))
    ref_grads = _grads(opt)
    opt.zero_grad()
    model.activation_checkpointing = True
    plan = plan_micro_batches([len(p) + len(c) for p, c in zip(PROMPTS, COMPLETIONS)], 16)
    assert 2 < len(plan) < len(PROMPTS)
    lp, stats = _update(model, opt, "grpo", True, plan)
    assert torch.equal(lp, ref_lp) and stats == ref_stats
    for g, ref in zip(_grads(opt), ref_grads):
        if dtype == "float32":
            torch.testing.assert_close(g, ref, atol=1e-7, rtol=1e-5)
        else:  # each micro-batch's weight grad is rounded to bf16 once before the fp32 sum
            assert float((g - ref).norm() / ref.norm()) < 1e-2
