"""A real-size step on the tiny default: micro-batches, activation checkpointing, mini-batches x
iterations and fp32 master weights wired into `update_policy`, through `build_trainer` + `rl_step` / `train`."""
import hashlib
import math

import pytest
import torch

from onpolicy import kernels

TIMING = ("time/", "throughput/")


def _one_step(tiny_cfg, name, parts=None, **over):
    """One RL step from the warm start (`parts`: trainer.TrainerParts); -> (metrics without timings, master
    grads before clipping, trainer)."""
    from onpolicy.trainer.loop import rl_step
    from onpolicy.trainer.setup import build_trainer

    cfg = tiny_cfg(name, **{"trainer.steps": 1, **over})
    grads = []
    with kernels.invariant_mode(True):
        run = build_trainer(cfg, log=lambda *a: None, parts=parts)
        real = run.optimizer.clip_grad_norm_

        def spy(max_norm):
            run.optimizer.accumulate_grads()
            grads.append([m.grad.clone() for m in run.optimizer.masters])
            return real(max_norm)

        run.optimizer.clip_grad_norm_ = spy
        try:
            metrics = rl_step(run, 0)
        finally:
            run.logger.close()
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}, grads, run


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batch_sizes_agree(tiny_cfg, checkpointing):
    """Budgets of 1 token (one sequence each), ~3 sequences and null (all): the parity metrics and the loss are
    bitwise equal, the gradients equal within fp32 tolerance; checkpointing changes no bit."""
    ref, ref_grads, _ = _one_step(tiny_cfg, "all")
    assert ref["onpolicy/kl"] == 0.0 and ref["grad_norm"] > 0
    for budget in (1, 48, None):
        got, grads, run = _one_step(tiny_cfg, f"mb{budget}-{checkpointing}", **{
            "trainer.micro_batch_tokens": budget, "trainer.activation_checkpointing": checkpointing})
        assert run.model.activation_checkpointing is checkpointing
        keys = [k for k in ref if k != "grad_norm"]
        assert {k: got[k] for k in keys} == {k: ref[k] for k in keys}
        assert math.isclose(got["grad_norm"], ref["grad_norm"], rel_tol=1e-5)
        for g, r in zip(grads[0], ref_grads[0]):
            if budget is None:  # same split: checkpointing recomputes the same bits
                assert torch.equal(g, r)
            torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-5)


def test_micro_batch_budget_splits_the_step(tiny_cfg):
    from onpolicy.trainer import TrainerParts
    from onpolicy.trainer.update import trainer_logprobs

    calls = []

    def counted(model, ro, temperature, grad):
        calls.append(len(ro.prompt_ids))
        return trainer_logprobs(model, ro, temperature, grad)

    _one_step(tiny_cfg, "split", TrainerParts(logprobs_fn=counted), **{"trainer.micro_batch_tokens": 48})
    assert sum(calls) == 16 and 3 < len(calls) < 16 and max(calls) >= 2


def test_mini_batches_first_ratio_exactly_one_later_updates_clip(tiny_cfg):
    from onpolicy.trainer import TrainerParts
    from onpolicy.trainer.losses import slice_loss

    ratios = []

    def spy(*a, **k):
        out = slice_loss(*a, **k)
        ratios.append((k["check_on_policy"], out.ratio))
        return out

    m, _, _ = _one_step(tiny_cfg, "mini", TrainerParts(loss_fn=spy), **{
        "trainer.mini_batches": 2, "trainer.num_iterations": 2, "trainer.micro_batch_tokens": 64, "trainer.lr": 3e-2})
    assert m["train/updates"] == 4 and m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0
    first = [r for on, r in ratios if on]
    later = [r for on, r in ratios if not on]
    assert first and later and len(first) + len(later) == len(ratios)
    assert all(bool((r == 1.0).all()) for r in first)  # bitwise on-policy (strict mode checked it too)
    assert any(bool((r != 1.0).any()) for r in later)
    assert m["loss/clip_frac_last"] > 0.0 and "loss/ratio_mean_last" in m


def _weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _train(cfg):
    from onpolicy.trainer import train
    from onpolicy.trainer.checkpoint import POLICY_DIR

    s = train(cfg, log=lambda *a: None)
    assert s["final_policy"].endswith(POLICY_DIR)
    return s


def _policy_hash(summary) -> str:
    from onpolicy.model import load_pretrained

    return _weights_hash(load_pretrained(summary["final_policy"])[0])


def _rows(cfg):
    import json

    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)} for line in f]


REAL = {"model.dtype": "bfloat16", "trainer.micro_batch_tokens": 64, "trainer.activation_checkpointing": True,
        "trainer.mini_batches": 2, "trainer.num_iterations": 2, "trainer.lr": 1e-3}


def test_same_seed_same_weights_and_resume_continues_bitwise(tiny_cfg):
    """Two runs with micro-batches, checkpointing and mini-batches give the same weights (hash); a run stopped
    after step 2 and resumed (fp32 masters and AdamW state restored) ends with the same bits and metrics."""
    a = tiny_cfg("a", **REAL, **{"trainer.steps": 3})
    b = tiny_cfg("b", **REAL, **{"trainer.steps": 3})
    ha, hb = _policy_hash(_train(a)), _policy_hash(_train(b))
    assert ha == hb
    c = tiny_cfg("c", **REAL, **{"trainer.steps": 2})
    _train(c)
    c3 = tiny_cfg("c", **REAL, **{"trainer.steps": 3, "trainer.resume": True})
    assert _policy_hash(_train(c3)) == ha
    assert _rows(c3) == _rows(a)


def test_bf16_lr_1e6_moves_every_master_weight(tiny_cfg):
    """bf16 model at lr 1e-6: the fp32 masters change (nearly) everywhere; parity stays exactly 0.0."""
    from onpolicy.trainer.loop import rl_step
    from onpolicy.trainer.setup import build_trainer

    cfg = tiny_cfg("bf16", **{"model.dtype": "bfloat16", "trainer.lr": 1e-6, "trainer.warmup_steps": 0,
                              "trainer.steps": 3})
    with kernels.invariant_mode(True):
        run = build_trainer(cfg, log=lambda *a: None)
        assert all(p.dtype == torch.bfloat16 for p in run.model.parameters())
        before = [m.detach().clone() for m in run.optimizer.masters]
        rows = [rl_step(run, s) for s in range(3)]
        run.logger.close()
    for r in rows:
        assert r["onpolicy/kl"] == 0.0 and r["onpolicy/logprob_diff/max"] == 0.0 and r["onpolicy/mismatch_frac"] == 0.0
    assert any(r["reward/std"] > 0 for r in rows)
    changed = sum(int((m != b).sum()) for m, b in zip(run.optimizer.masters, before))
    total = sum(b.numel() for b in before)
    assert changed / total > 0.95, f"only {changed / total:.1%} of the master weights changed"
    for p, m in zip(run.optimizer.params, run.optimizer.masters):  # the model holds the bf16 copy of the master
        assert torch.equal(p, m.to(torch.bfloat16))


def test_memory_metrics_absent_on_cpu(tiny_cfg):
    m, _, _ = _one_step(tiny_cfg, "mem")
    assert not any(k.startswith("memory/") for k in m)


def test_nan_in_a_later_update_saves_no_half_updated_policy(tiny_cfg, monkeypatch):
    """Update 2 of 2 gets a NaN gradient norm: update 1 is already applied, so train() must not save the
    weights in memory as 'the last good policy'; it points at the last checkpoint (none here)."""
    from onpolicy.trainer import train
    from onpolicy.trainer.checkpoint import checkpoint_root, list_checkpoints
    from onpolicy.trainer.health import NonFiniteError

    calls = {"n": 0}
    real = torch.nn.utils.clip_grad_norm_

    def patched(params, max_norm):
        calls["n"] += 1
        norm = real(params, max_norm)
        return norm * float("nan") if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", patched)
    cfg = tiny_cfg("nan2", **{"trainer.mini_batches": 2, "trainer.steps": 2})
    with pytest.raises(NonFiniteError, match=r"step 1: gradient norm \(update 2 of 2; updates 1-1 were applied\)")\
            as e:
        train(cfg, log=lambda *a: None)
    assert e.value.saved is None and list_checkpoints(checkpoint_root(cfg)) == []


def test_default_ops_with_mini_batches_and_truncated_is(tiny_cfg):
    """invariant: false with 2 updates (the sampler's logprobs as the old policy), truncated IS, micro-batches
    and checkpointing: the step runs with finite metrics."""
    from onpolicy.trainer.loop import rl_step
    from onpolicy.trainer.setup import build_trainer

    cfg = tiny_cfg("fast", **{"trainer.invariant": False, "trainer.strict_onpolicy": False, "trainer.tis_cap": 2.0,
                              "trainer.mini_batches": 2, "trainer.micro_batch_tokens": 64,
                              "trainer.activation_checkpointing": True})
    with kernels.invariant_mode(False):
        run = build_trainer(cfg, log=lambda *a: None)
        m = rl_step(run, 0)
        run.logger.close()
    assert m["train/updates"] == 2 and math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert math.isfinite(m["onpolicy/kl"])
