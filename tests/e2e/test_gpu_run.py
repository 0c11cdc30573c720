"""GPU (H100) e2e: a short GRPO run of a Qwen3-0.6B-shaped random model in bf16 is exactly on-policy every
step through the Triton kernels; the same run with `invariant: false` (torch/cuBLAS defaults) is not."""
import json
import math

import pytest
import torch

PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")


def _chars_reward(prompts, completions, **_):
    """Random weights rarely emit the task's characters (86 of 151,936 ids; the tokenizer decodes the rest to
    other code points, `tiny_chars`); reward each one, so some groups have reward variance and the policy
    gradient (hence the weights) really changes between steps."""
    from onpolicy.model.tiny import CHARS

    return [float(sum(ch in CHARS for ch in c)) for c in completions]


def _cfg(tmp_path, name, invariant, steps):
    from onpolicy.config import ExperimentConfig
    from onpolicy.model.tiny import qwen3_0_6b_config

    shape = {k: v for k, v in qwen3_0_6b_config().__dict__.items() if k != "dtype"}
    return ExperimentConfig.from_dict({
        "model": {"path": "tiny", "dtype": "bfloat16", "device": "cuda", "tiny": shape},
        "data": {"dataset": "embedded:reverse", "num_examples": 64},
        "sampling": {"num_generations": 8, "max_tokens": 64},
        "engine": {"num_blocks": 1024},
        # lr 1e-3 so bf16 weights really move (an Adam step ~lr; ulp(0.02) in bf16 is ~1.2e-4).
        "trainer": {"steps": steps, "prompts_per_step": 8, "lr": 1e-3, "invariant": invariant,
                    "strict_onpolicy": invariant},
        "rewards": [{"name": "gpu_test_chars"}],
        "logging": {"output_dir": str(tmp_path / name), "plot": False},
    })


def _run(cfg):
    from onpolicy.rewards import register_reward
    from onpolicy.trainer import train

    register_reward("gpu_test_chars")(_chars_reward)
    summary = train(cfg)
    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:  # shown with `pytest -s`: the figures quoted in notes
        print(cfg.trainer.invariant, {k: r[k] for k in ("step", *PARITY, "reward/mean", "grad_norm", "time/step")})
    return summary, rows


@pytest.mark.gpu
def test_qwen3_0_6b_shape_bf16_grpo_is_exactly_on_policy(tmp_path):
    summary, rows = _run(_cfg(tmp_path, "invariant", invariant=True, steps=4))
    assert len(rows) == 4
    for r in rows:
        for key in PARITY:
            assert r[key] == 0.0, (r["step"], key, r[key])
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    assert any(r["grad_norm"] > 0 for r in rows), "no step had a non-zero policy gradient"
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_qwen3_0_6b_shape_bf16_default_ops_are_not_on_policy(tmp_path):
    summary, rows = _run(_cfg(tmp_path, "default_ops", invariant=False, steps=2))
    assert len(rows) == 2
    assert all(math.isfinite(r[k]) for r in rows for k in PARITY)
    assert max(r["onpolicy/mismatch_frac"] for r in rows) > 0.0
    assert max(r["onpolicy/logprob_diff/max"] for r in rows) > 0.0
