"""A 3-step GRPO run (the embedded default task's prompts) from each family's tiny transformers checkpoint,
loaded through `model.path`: the logged KL and logprob diffs are exactly 0.0 every step. A random model never
solves the task, so the reward here counts digits in the completion: it varies within a group, the gradient is
non-zero and steps 2-3 sample from updated weights. MoE families also log onpolicy/routing_mismatch 0.0."""
import json
from pathlib import Path

import pytest
import torch

from arch_cases import MUST, random_model, skip_reason
from onpolicy.model.tiny import CharTokenizer
from onpolicy.rewards.registry import available_rewards, register_reward

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")


if "test_digit_count" not in available_rewards():
    @register_reward("test_digit_count")
    def digit_count(prompts, completions, **kwargs):
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", MUST + ("olmo2", "smollm3", "phi4-mini", "gemma3", "qwen3-moe"))
def test_grpo_three_steps_exactly_on_policy(tmp_path, name):
    if skip_reason(name):
        pytest.skip(skip_reason(name))
    from onpolicy.config import parse_args
    from onpolicy.trainer import train

    path = tmp_path / "model"
    random_model(name, seed=5).save_pretrained(path)
    CharTokenizer().save_pretrained(path)
    rows = []
    overrides = {"model.path": str(path), "model.dtype": "float32", "trainer.steps": "3",
                 "trainer.prompts_per_step": "4", "sampling.num_generations": "4", "trainer.sft_warmup_steps": "0",
                 "trainer.strict_onpolicy": "true", "logging.output_dir": str(tmp_path / "out"),
                 "logging.plot": "false", "model.tiny": "{}",
                 "rewards": "[{name: test_digit_count, weight: 1.0}]"}
    argv = ["--config", str(CONFIG)] + [x for k, v in overrides.items() for x in (f"--{k}", v)]
    summary = train(parse_args(argv), log=lambda *a: None)
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["max_abs_kl"] == 0.0
    for r in rows:
        for key in PARITY + (("onpolicy/routing_mismatch",) if "moe" in name else ()):
            assert r[key] == 0.0, (name, r["step"], key, r[key])
    assert any(r["grad_norm"] > 0 for r in rows)  # the policy moved, so steps 2-3 sampled new weights
