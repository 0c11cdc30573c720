"""The embedded default end to end on CPU: exact on-policy parity every step, resume equality, clear config
errors before compute, the invariant: false comparison mode, and (slow) reward rising."""
import json
import math
from pathlib import Path

import pytest
import torch

PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")
TIMING = ("time/sample", "time/train", "time/step", "throughput/tokens_per_s")


def _train(cfg, parts=None):
    from onpolicy.trainer import train

    return train(cfg, log=lambda *a: None, parts=parts)


def _rows(cfg):
    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_default_run_is_exactly_on_policy(tiny_cfg):
    cfg = tiny_cfg(**{"trainer.strict_onpolicy": True})
    summary = _train(cfg)
    rows = _rows(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in PARITY:
            assert r[key] == 0.0, (r["step"], key, r[key])
        for key in ("loss", "grad_norm", "reward/mean", "reward/std"):
            assert math.isfinite(r[key]), (key, r[key])
        assert r["completion/mean_length"] > 0
    assert summary["max_abs_kl"] == 0.0 and summary["steps"] == 3
    # Rewards varied within groups, so the policy gradient was non-zero (resume test: weights do change).
    assert any(r["grad_norm"] > 0 for r in rows)


def _final_weights(cfg, step=None):
    from onpolicy.trainer import checkpoint

    root = checkpoint.checkpoint_root(cfg)
    ck = checkpoint.load_checkpoint(root if step is None else root / f"step-{step}", restore_rng=False)
    return ck.step, ck.model.state_dict()


def test_resume_is_bitwise_identical(tiny_cfg):
    common = {"trainer.steps": 4, "trainer.save_every": 2}
    straight = tiny_cfg("straight", **common)
    _train(straight)
    first = tiny_cfg("resumed", **{**common, "trainer.steps": 2})
    _train(first)
    second = tiny_cfg("resumed", **{**common, "trainer.resume": True})
    summary = _train(second)
    assert summary["start_step"] == 2 and summary["steps"] == 2
    step_a, wa = _final_weights(straight)
    step_b, wb = _final_weights(second)
    assert step_a == step_b == 4
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    _, w2 = _final_weights(straight, step=2)
    assert any(not torch.equal(w2[k], wa[k]) for k in wa), "steps 3-4 did not change the weights"
    ra, rb = _rows(straight), _rows(second)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


def test_config_errors_are_clear_and_before_compute(tmp_path, tiny_cfg, monkeypatch):
    from onpolicy.config import ConfigError
    from onpolicy.model import tiny
    from onpolicy.trainer import train

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the config error was raised")

    monkeypatch.setattr(tiny, "build_tiny", no_compute)
    with pytest.raises(ConfigError, match=r"trainer\.algo.*allowed: grpo, dr_grpo, dapo, rloo"):
        tiny_cfg(**{"trainer.algo": "ppo"})
    with pytest.raises(ConfigError, match=r"trainer\.tis_cap"):
        tiny_cfg(**{"trainer.tis_cap": 2.0})
    with pytest.raises(ConfigError, match=r"sampling\.num_generations"):
        tiny_cfg(**{"sampling.num_generations": 0})
    with pytest.raises(ValueError, match=r"rewards\[0\]\.name.*no_such_reward"):
        train(tiny_cfg(rewards=[{"name": "no_such_reward"}]), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"embedded task must be one of"):
        train(tiny_cfg(**{"data.dataset": "embedded:chess"}), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"model\.path"):
        train(tiny_cfg(**{"model.path": str(tmp_path / "missing"), "model.tiny": {}}), log=lambda *a: None)
    cfg = tiny_cfg()
    assert not (Path(cfg.logging.output_dir) / "metrics.jsonl").exists()


def test_invariant_false_logs_parity_metrics(tiny_cfg):
    """torch default ops in sampler and trainer; the metrics are logged (on CPU they may well be 0)."""
    cfg = tiny_cfg(**{"trainer.invariant": False, "trainer.strict_onpolicy": False, "trainer.tis_cap": 2.0,
                     "trainer.steps": 2})
    summary = _train(cfg)
    rows = _rows(cfg)
    assert len(rows) == 2
    for r in rows:
        for key in PARITY:
            assert key in r and math.isfinite(r[key]) and r[key] >= 0.0 or key == "onpolicy/kl"
        assert 0.0 <= r["onpolicy/mismatch_frac"] <= 1.0
        assert math.isfinite(r["loss"])
    assert summary["steps"] == 2


@pytest.mark.parametrize("algo", ["dr_grpo", "dapo", "rloo"])
def test_other_algorithms_run_on_policy(tiny_cfg, algo):
    extra = {"trainer.dynamic_sampling": True, "trainer.overlong_filter": True} if algo == "dapo" else {}
    cfg = tiny_cfg(**{"trainer.algo": algo, "trainer.steps": 2, "trainer.beta": 0.05, **extra})
    _train(cfg)
    for r in _rows(cfg):
        assert all(r[k] == 0.0 for k in PARITY), r
        assert math.isfinite(r["loss"]) and r["loss/kl_ref"] >= 0.0


@pytest.mark.slow
def test_default_config_raises_reward(e2e_root, default_config_path):
    """The README command's config, unchanged except the output dir (its SFT cache is the session's): reward
    must clearly rise, with exact parity on every step."""
    from onpolicy.config import parse_args

    cfg = parse_args(["--config", str(default_config_path), "--logging.output_dir", str(e2e_root / "default"),
                      "--logging.plot", "false", "--trainer.sft_cache_dir", str(e2e_root / "cache")])
    s = _train(cfg)
    assert s["max_abs_kl"] == 0.0 and s["max_mismatch_frac"] == 0.0
    assert s["reward_last10"] > s["reward_first10"] + 0.2, (s["reward_first10"], s["reward_last10"])


@pytest.mark.parametrize("micro_batch_tokens", [None, 1])
def test_strict_onpolicy_stops_on_a_one_ulp_mismatch(tiny_cfg, micro_batch_tokens):
    """Nudge one sampler logprob by one ulp: strict mode must stop with the sequence/token and a pointer
    (the sequence's index in the step, also when it is checked in a micro-batch of its own)."""
    from onpolicy.trainer import SingleTurnRollouts, TrainerParts
    from onpolicy.trainer.parity import OnPolicyViolation

    class Nudged(SingleTurnRollouts):
        def collect(self, rows, step):
            ro = super().collect(rows, step)
            lp = ro.sampler_logprobs[1]
            lp[0] = torch.nextafter(lp[0], torch.tensor(0.0))
            return ro

    parts = TrainerParts(rollouts=Nudged.for_trainer)
    with pytest.raises(OnPolicyViolation, match=r"step 1: sequence 1, completion token 0.*scripts\.doctor"):
        _train(tiny_cfg(**{"trainer.strict_onpolicy": True, "trainer.micro_batch_tokens": micro_batch_tokens}),
               parts)


def test_sft_warm_start_is_cached(tiny_cfg):
    """A second run with the same settings loads the cached warm start instead of training again."""
    from onpolicy.trainer import setup

    stats = []
    for name in ("a", "b"):
        cfg = tiny_cfg(name, **{"trainer.steps": 1, "trainer.sft_warmup_steps": 3})
        run = setup.build_trainer(cfg, log=lambda *a: None)
        run.logger.close()
        stats.append(run.sft_stats)
    assert stats[0]["sft/cached"] is False and stats[1]["sft/cached"] is True
    assert stats[0]["sft/loss_last"] == stats[1]["sft/loss_last"]


def test_rerun_in_same_dir_needs_overwrite_then_starts_a_fresh_metrics_file(tiny_cfg):
    cfg = tiny_cfg(**{"trainer.steps": 2})
    _train(cfg)
    with pytest.raises(ValueError, match=r"holds an earlier run's results"):
        _train(cfg)
    cfg.logging.overwrite = True
    _train(cfg)
    assert [r["step"] for r in _rows(cfg)] == [1, 2]
