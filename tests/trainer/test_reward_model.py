"""A local HF *ForSequenceClassification directory as a reward: our decoder + score head equals transformers'
score, the same completion scores the same bits in any batch, bad directories are refused at config time, an
unsupported architecture goes through transformers, and a GRPO step runs on the reward model's scores."""
import json

import pytest
import torch

from onpolicy.config import ConfigError, parse_args
from onpolicy.model.tiny import CharTokenizer, tiny_config
from onpolicy.rewards.reward_model import RewardModel, pooled_index

PROMPTS = ["12+7=", "3 4 5 ->", "reverse 1234:", "x", "hello world, ", "99-1=", "a<b?", "(2*3)+1="]
COMPLETIONS = ["19", "5 4 3<eos>", "4321<pad>", "yz", "hi!", "98", "yes, a is less", "7"]


def _save_rm(path, dtype=torch.float32, **overrides):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    torch.manual_seed(0)
    hf = dict(vocab_size=tiny_config().vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=64,
              num_labels=1, pad_token_id=CharTokenizer().pad_token_id, tie_word_embeddings=False)
    hf.update(overrides)
    model = Qwen3ForSequenceClassification(Qwen3Config(**hf))
    with torch.no_grad():  # a non-trivial head and norms so every part of the pooled score matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.to(dtype).save_pretrained(path)
    CharTokenizer().save_pretrained(path)
    return str(path)


def _hf_scores(path, prompts, completions):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = tok(p + c, add_special_tokens=False)["input_ids"]
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return out


def test_pooling_follows_transformers():
    assert pooled_index([5, 6, 7], 0) == 2 and pooled_index([5, 6, 0, 0], 0) == 1 and pooled_index([0, 0], 0) == 0
    assert pooled_index([5, 0, 6, 0], 0) == 2 and pooled_index([5, 0], None) == 1


def test_score_equals_transformers(tmp_path):
    path = _save_rm(tmp_path / "rm")
    rm = RewardModel(path).to("cpu")
    ours = rm(PROMPTS, COMPLETIONS)
    assert rm.backend == "onpolicy" and rm.__name__ == "rm"
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(_hf_scores(path, PROMPTS, COMPLETIONS)),
                               atol=2e-5, rtol=1e-5)
    assert len(set(ours)) == len(ours)  # the texts differ, so do the scores


@pytest.mark.parametrize("device, dtype", [("cpu", "float32"), ("cpu", "bfloat16"),
                                           pytest.param("cuda", "float32", marks=pytest.mark.gpu),
                                           pytest.param("cuda", "bfloat16", marks=pytest.mark.gpu)])
def test_reward_is_batch_invariant(tmp_path, device, dtype):
    """A completion's reward is the same bits alone and at any position in batches of 2..8 other texts (the
    checkpoint's dtype; on CUDA the fp32 scores also match transformers')."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    path = _save_rm(tmp_path / "rm", dtype=getattr(torch, dtype))
    rm = RewardModel(path).to(device)
    alone = [rm([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    assert rm._score.dtype == getattr(torch, dtype) and rm.backend == "onpolicy"
    gen = torch.Generator().manual_seed(0)
    for size in (2, 3, 5, 8):
        order = torch.randperm(len(PROMPTS), generator=gen)[:size].tolist()
        batch = rm([PROMPTS[i] for i in order], [COMPLETIONS[i] for i in order])
        assert torch.equal(torch.tensor(batch), torch.tensor([alone[i] for i in order])), size
    if device == "cuda" and dtype == "float32":
        torch.testing.assert_close(torch.tensor(alone), torch.tensor(_hf_scores(path, PROMPTS, COMPLETIONS)),
                                   atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_goes_through_transformers(tmp_path):
    path = _save_rm(tmp_path / "gelu-rm", hidden_act="gelu")  # onpolicy.model supports SiLU only
    rm = RewardModel(path).to("cpu")
    assert rm(PROMPTS[:3], COMPLETIONS[:3]) == pytest.approx(_hf_scores(path, PROMPTS[:3], COMPLETIONS[:3]), abs=1e-6)
    assert rm.backend == "transformers"


def test_chat_data_uses_the_reward_models_template(tmp_path):
    from transformers import AutoTokenizer

    path = _save_rm(tmp_path / "rm")
    rm = RewardModel(path).load()
    prompt, completion = [{"role": "user", "content": "1+2="}], [{"role": "assistant", "content": "3"}]
    with pytest.raises(ValueError, match="chat data needs a chat template"):
        rm([prompt], [completion])
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(path)
    rm = RewardModel(path).load()
    assert rm.texts([prompt], [completion]) == ["<user>1+2=<assistant>3"]
    assert rm([prompt], [completion]) == rm(["<user>1+2="], ["<assistant>3"])
    with pytest.raises(ValueError, match="must both be strings or both message lists"):
        rm(["1+2="], [completion])


def test_bad_reward_model_directories_fail_at_config_time(tmp_path):
    def error(model):
        with pytest.raises(ConfigError) as e:
            parse_args(["--rewards", f"[{{model: '{model}'}}]"])
        return str(e.value)

    assert error(tmp_path / "nope").startswith(f"rewards[0].model: '{tmp_path / 'nope'}' is not a directory")
    path = _save_rm(tmp_path / "two", num_labels=2)
    assert error(path).startswith(f"rewards[0].model: '{path}' has a score head with 2 outputs; allowed: num_labels 1")
    cfg = json.loads((tmp_path / "two/config.json").read_text())
    (tmp_path / "two/config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen3ForCausalLM"]}))
    assert "allowed: a *ForSequenceClassification model" in error(path)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_grpo_step_with_a_reward_model(tmp_path, device):
    """One GRPO step scored by the reward model (YAML form `{model: DIR}`): KL 0, the rewards are the reward
    model's scores of prompt + completion (on the policy's device), logged as reward/<dir name>/mean."""
    import onpolicy
    from onpolicy.trainer import TrainerParts, score_rollouts

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    path = _save_rm(tmp_path / "judge")
    scored = []

    def kept(*a, **k):
        scored.append(score_rollouts(*a, **k))
        return scored[-1]

    out = tmp_path / "run"
    summary = onpolicy.train({
        "model": {"path": "tiny", "device": device},
        "data": {"dataset": "embedded:reverse", "num_examples": 8, "max_prompt_tokens": 16},
        "sampling": {"num_generations": 4, "max_tokens": 4},
        "trainer": {"steps": 1, "prompts_per_step": 2, "lr": 1e-3},
        "rewards": [{"model": path, "weight": 1.0}],
        "logging": {"output_dir": str(out), "plot": False}}, log=lambda *a: None, parts=TrainerParts(score_fn=kept))
    batch = scored[0]
    prompts = [r for r in batch.rollout.prompt_ids]
    tok = CharTokenizer()
    expected = RewardModel(path).to(device)([tok.decode(p) for p in prompts], batch.rollout.texts)
    assert batch.rewards.tolist() == pytest.approx(expected, abs=0) and batch.rewards.std() > 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["onpolicy/kl"] == 0.0 and row["reward/judge/mean"] == pytest.approx(sum(expected) / len(expected))
    assert summary["final_policy"]
