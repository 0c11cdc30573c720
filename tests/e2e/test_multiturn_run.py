"""The embedded multi-turn task (configs/tiny-cpu-multiturn.yaml, the `guess` environment) through `train()`:
onpolicy/kl exactly 0.0 over every model token of every turn, each step; env/* metrics; an exact resume; LoRA
adapters (base frozen bitwise, exact resume); and (slow) the environment's reward rising from random weights."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.conftest import REPO

CONFIG = REPO / "configs" / "tiny-cpu-multiturn.yaml"


def _cfg(out, **overrides):
    from onpolicy.config import parse_args

    argv = ["--config", str(CONFIG), "--logging.output_dir", str(out), "--logging.plot", "false"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return parse_args(argv)


def _train(cfg):
    from onpolicy.trainer import train

    return train(cfg, log=lambda *_: None)


def _rows(cfg):
    return [json.loads(line) for line in (Path(cfg.logging.output_dir) / "metrics.jsonl").read_text().splitlines()]


SMALL = {"trainer.prompts_per_step": 2, "sampling.num_generations": 4}


def test_multiturn_steps_are_exactly_on_policy_and_resume_exactly(tmp_path):
    straight = _cfg(tmp_path / "a", **SMALL, **{"trainer.steps": 3})
    history = _train(straight)["history"]
    for m in history:
        assert m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0 and m["onpolicy/logprob_diff/max"] == 0.0
        assert m["env/turns_mean"] >= 1 and m["env/observation_tokens_mean"] > 0 and m["env/env_error_frac"] == 0.0
        assert m["completion/mean_length"] == m["env/model_tokens_mean"]  # the loss counts the model's tokens only
    assert max(m["env/turns_mean"] for m in history) > 1
    _train(_cfg(tmp_path / "b", **SMALL, **{"trainer.steps": 2}))
    resumed = _cfg(tmp_path / "b", **SMALL, **{"trainer.steps": 3, "trainer.resume": True})
    assert _train(resumed)["start_step"] == 2
    last, again = _rows(straight)[-1], _rows(resumed)[-1]
    for key in ("reward/mean", "loss", "grad_norm", "env/turns_mean", "env/reward_mean", "onpolicy/kl"):
        assert last[key] == again[key], key


LORA = {**SMALL, "lora.r": 4, "lora.alpha": 8.0}


def _train_keeping_weights(cfg):
    """train(cfg) -> (history, {name: parameter} after the run, {name: clone} before its first step)."""
    from onpolicy.trainer import train
    from onpolicy.trainer.setup import build_trainer

    seen = {}

    def spy(*a, **kw):
        seen["trainer"] = build_trainer(*a, **kw)
        seen["before"] = {n: p.detach().clone() for n, p in seen["trainer"].model.named_parameters()}
        return seen["trainer"]

    history = train(cfg, log=lambda *_: None, builder=spy)["history"]
    return history, dict(seen["trainer"].model.named_parameters()), seen["before"]


def test_multiturn_lora_is_exactly_on_policy_with_the_base_frozen(tmp_path):
    """After step 1 the adapters are non-zero, so KL 0.0 on steps 2-3 means the sampler runs them too."""
    from onpolicy.model.layers import is_adapter

    history, after, before = _train_keeping_weights(_cfg(tmp_path, **LORA, **{"trainer.steps": 3}))
    for m in history:
        assert m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0 and m["onpolicy/logprob_diff/max"] == 0.0
    assert max(m["env/turns_mean"] for m in history) > 1 and all(m["grad_norm"] > 0 for m in history)
    adapters = [n for n in after if is_adapter(n)]
    assert adapters and len(adapters) < len(after)
    for name, p in after.items():
        if not is_adapter(name):
            assert torch.equal(p, before[name]) and not p.requires_grad, name
    assert all(not torch.equal(after[n], before[n]) for n in adapters if n.endswith("lora_B")), "adapters unchanged"


def test_multiturn_lora_resumes_exactly(tmp_path):
    """bf16 with micro- and mini-batches: 3 steps straight equal 2 steps, a resume, and step 3."""
    from onpolicy.lora.training import ADAPTER_DIR
    from onpolicy.trainer import checkpoint

    common = {**LORA, "model.dtype": "bfloat16", "trainer.micro_batch_tokens": 48, "trainer.mini_batches": 2}
    straight = _cfg(tmp_path / "a", **common, **{"trainer.steps": 3})
    _train(straight)
    _train(_cfg(tmp_path / "b", **common, **{"trainer.steps": 2}))
    resumed = _cfg(tmp_path / "b", **common, **{"trainer.steps": 3, "trainer.resume": True})
    assert _train(resumed)["start_step"] == 2
    assert all(m["onpolicy/kl"] == 0.0 for m in _rows(straight) + _rows(resumed))
    last, again = _rows(straight)[-1], _rows(resumed)[-1]
    for key in ("reward/mean", "loss", "grad_norm", "env/turns_mean", "env/model_tokens_mean"):
        assert last[key] == again[key], key
    a, b = (load_file(str(checkpoint.checkpoint_root(c) / "step-3" / ADAPTER_DIR / "adapter_model.safetensors"))
            for c in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_environments_that_all_fail_never_stop_the_run(tmp_path):
    """Every reset raises: each step logs the reason, masks every trajectory out of the loss and goes on."""
    from onpolicy.envs import register_env
    from onpolicy.trainer import train

    @register_env("test_e2e_down")
    class Down:
        def reset(self, row):
            raise RuntimeError("sandbox down")

        def step(self, turn):
            raise AssertionError("never stepped")

    lines = []
    cfg = _cfg(tmp_path, **SMALL, **{"trainer.steps": 2, "env.name": "test_e2e_down"})
    history = train(cfg, log=lines.append)["history"]
    assert [m["env/env_error_frac"] for m in history] == [1.0, 1.0]
    assert all(m["loss"] == 0.0 and m["grad_norm"] == 0.0 and m["onpolicy/kl"] == 0.0 for m in history)
    assert sum("8/8 trajectories ended by an environment error (masked out of the loss); the first: reset: "
               "RuntimeError: sandbox down" in line for line in lines) == 2


def test_single_turn_only_settings_are_refused_with_an_environment(tmp_path):
    from onpolicy.config_fields import ConfigError

    for key, value, field in [("trainer.eval_every", 1, "trainer.eval_every"),
                              ("trainer.sft_warmup_steps", 5, "trainer.sft_warmup_steps"),
                              ("trainer.algo", "dr_grpo", "trainer.loss_agg"),
                              ("env.max_total_tokens", 90, "env.max_total_tokens")]:
        with pytest.raises(ConfigError, match=field):
            cfg = _cfg(tmp_path, **{key: value})
            from onpolicy.build import check_context

            check_context(cfg)


@pytest.mark.slow
def test_multiturn_reward_rises_with_kl_exactly_zero(tmp_path):
    """From random weights: the share of trajectories that find the number and the reward rise (about a
    minute on two CPU cores)."""
    history = _train(_cfg(tmp_path, **{"trainer.steps": 30}))["history"]
    assert all(m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0 for m in history)
    first = sum(m["reward/mean"] for m in history[:5]) / 5
    last = sum(m["reward/mean"] for m in history[-5:]) / 5
    assert last > first + 0.25, (first, last)
    assert sum(m["env/done_frac"] for m in history[-5:]) / 5 > 2 * sum(m["env/done_frac"] for m in history[:5]) / 5


def test_calculator_run_on_a_chatml_checkpoint(tmp_path, chat_tokenizer):
    """A local HF directory with a ChatML template: chat-message data, the calculator (nudged, so trajectories
    go on), `</tool_call>` ending turns, rewards seeing the trajectory's messages; KL 0.0 each step."""
    from onpolicy.config import ExperimentConfig
    from onpolicy.model import save_pretrained
    from onpolicy.model.tiny import build_tiny
    from onpolicy.rewards import register_reward
    from onpolicy.trainer import train

    seen = []

    @register_reward("test_mt_messages")
    def messages_reward(prompts, completions, env_reward=None, turn_rewards=None, env_finish=None, **_):
        seen.append((prompts, completions, env_finish))
        return [float(len(c)) for c in completions]

    model_dir, data = tmp_path / "model", tmp_path / "math.jsonl"
    model, _ = build_tiny(seed=3, vocab_size=110, num_hidden_layers=1, head_dim=64, max_position_embeddings=256)
    save_pretrained(model, str(model_dir))
    chat_tokenizer(110, {"<|im_start|>": 100, "<|im_end|>": 101}, eos="<|im_end|>").save_pretrained(model_dir)
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}*7=?"}], "answer": str(7 * i)})
                            + "\n" for i in range(4)))
    cfg = ExperimentConfig.from_dict({
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": str(data), "max_prompt_tokens": 40},
        "sampling": {"num_generations": 2, "max_tokens": 6},
        "engine": {"use_cuda_graphs": False},
        "trainer": {"steps": 2, "prompts_per_step": 2, "lr": 1e-3},
        "env": {"name": "calculator", "kwargs": {"nudge": "Use the tool."}, "max_turns": 3,
                "max_total_tokens": 120, "stop": ["</tool_call>"]},
        "rewards": [{"name": "math_answer"}, {"name": "test_mt_messages", "weight": 0.1}],
        "logging": {"output_dir": str(tmp_path / "out"), "plot": False},
    })
    history = train(cfg, log=lambda *_: None)["history"]
    assert [m["onpolicy/kl"] for m in history] == [0.0, 0.0] and history[0]["env/turns_mean"] == 3.0
    prompts, completions, finish = seen[0]
    assert prompts[0][0]["role"] == "user" and finish[0] == "max_turns"
    assert [m["role"] for m in completions[0]] == ["assistant", "user", "assistant", "user", "assistant"]
    assert completions[0][1]["content"] == "Use the tool."
