"""GPU (H100): a Qwen3-0.6B-shaped random bf16 model with the calculator environment, 64 trajectories of up
to 4 turns per step through `train()`: onpolicy/kl exactly 0.0 over every model token of every turn, each
step well under 90 s. `pytest -s` prints the per-step figures."""
import json

import pytest
import torch

from onpolicy.envs import register_env
from onpolicy.envs.calculator import Calculator

PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/logprob_diff/mean", "onpolicy/mismatch_frac")


@register_env("gpu_test_calculator")
class RaggedCalculator(Calculator):
    """Random weights never write a tool call: each turn gets a tool answer (its length times 7, computed by the
    calculator), and a turn whose token ids sum to a multiple of 3 is the final answer, so turn counts are
    ragged."""

    def step(self, turn):
        if sum(turn.token_ids) % 3 == 0:
            return [], 0.0, True
        call = '<tool_call>{"name": "calculator", "arguments": {"expression": "%d*7"}}</tool_call>' % len(turn)
        return super().step(call)


def _chars_reward(prompts, completions, **_):
    """Characters of the tiny alphabet in the last turn (random weights emit other code points): groups get
    reward variance, so the weights really change between steps."""
    from onpolicy.model.tiny import CHARS

    return [float(sum(ch in CHARS for ch in c[-1]["content"])) for c in completions]


@pytest.mark.gpu
def test_qwen3_0_6b_shape_calculator_64_trajectories_exactly_on_policy(tmp_path):
    from onpolicy.config import ExperimentConfig
    from onpolicy.model.tiny import qwen3_0_6b_config
    from onpolicy.rewards import register_reward
    from onpolicy.trainer import train

    register_reward("gpu_test_mt_chars")(_chars_reward)
    shape = {k: v for k, v in qwen3_0_6b_config().__dict__.items() if k not in ("dtype", "max_position_embeddings")}
    cfg = ExperimentConfig.from_dict({
        "model": {"path": "tiny", "dtype": "bfloat16", "device": "cuda",
                  "tiny": {**shape, "max_position_embeddings": 1024}},
        "data": {"dataset": "embedded:arith", "num_examples": 64},
        "sampling": {"num_generations": 4, "max_tokens": 48},
        "engine": {"num_blocks": 4096},
        "trainer": {"steps": 2, "prompts_per_step": 16, "lr": 1e-3, "strict_onpolicy": True,
                    "micro_batch_tokens": 8192},
        "env": {"name": "gpu_test_calculator", "max_turns": 4, "max_total_tokens": 400,
                "stop": ["</tool_call>"], "kwargs": {"system_prompt": "Use the calculator tool."}},
        "rewards": [{"name": "env"}, {"name": "gpu_test_mt_chars"}],
        "logging": {"output_dir": str(tmp_path / "run"), "plot": False},
    })
    train(cfg)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        print({k: r[k] for k in ("step", *PARITY, "env/turns_mean", "env/model_tokens_mean",
                                 "env/observation_tokens_mean", "time/sample", "time/step")})
        assert all(r[k] == 0.0 for k in PARITY), r
        assert 1.0 < r["env/turns_mean"] <= 4.0 and r["env/env_error_frac"] == 0.0
        assert r["time/step"] < 90, r["time/step"]
    assert any(r["grad_norm"] > 0 for r in rows)
    torch.cuda.synchronize()
