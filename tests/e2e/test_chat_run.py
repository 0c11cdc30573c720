"""A run on chat data from a local HF directory: message prompts rendered with the template and its kwargs,
every eos id of generation_config.json stops the engine, rewards see TRL's message form, KL exactly 0.0, and
the saved policy carries the generation config."""
import json

from onpolicy.config import ExperimentConfig
from onpolicy.model import save_pretrained
from onpolicy.model.tiny import build_tiny
from onpolicy.rewards import register_reward

VOCAB, EOS_IDS = 110, [101, 105]
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": EOS_IDS, "temperature": 0.6, "top_p": 0.95}
SEEN = []


@register_reward("test_chat_run_length")
def _length_reward(prompts, completions, answer=None, **kwargs):
    SEEN.append((prompts, completions, answer))
    return [float(len(c[0]["content"]) % 2) for c in completions]


def test_grpo_on_chat_messages(tmp_path, chat_tokenizer):
    from onpolicy.trainer import train

    model_dir, data = tmp_path / "model", tmp_path / "chat.jsonl"
    model, _ = build_tiny(seed=3, vocab_size=VOCAB, num_hidden_layers=1, head_dim=64, max_position_embeddings=128)
    save_pretrained(model, str(model_dir))
    chat_tokenizer(VOCAB, {"<|im_start|>": 100, "<|im_end|>": 101, "<|endoftext|>": 105},
                   eos="<|im_end|>").save_pretrained(model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}+{i}=?"}], "answer": str(2 * i)})
                            + "\n" for i in range(4)))
    cfg = ExperimentConfig.from_dict({
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": str(data), "max_prompt_tokens": 96, "system_prompt": "Add.",
                 "chat_template_kwargs": {"enable_thinking": False}},
        "sampling": {"num_generations": 2, "max_tokens": 6},
        "engine": {"use_cuda_graphs": False},
        "trainer": {"steps": 2, "prompts_per_step": 2, "lr": 1e-3, "strict_onpolicy": True},
        "rewards": [{"name": "test_chat_run_length"}],
        "logging": {"output_dir": str(tmp_path / "out"), "plot": False},
    })
    lines = []
    SEEN.clear()
    summary = train(cfg, log=lines.append)
    assert [m["onpolicy/kl"] for m in summary["history"]] == [0.0, 0.0]
    assert any("generation: completions stop on eos ids [101, 105]; the checkpoint's generation_config.json sampling "
               "defaults (temperature=0.6, top_p=0.95) are not applied" in line for line in lines)
    prompts, completions, answer = SEEN[0]
    assert prompts[0][0] == {"role": "system", "content": "Add."} and prompts[0][1]["role"] == "user"
    assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in completions)
    assert len(completions) == 4 and answer[0] == str(2 * int(prompts[0][1]["content"][0]))
    saved = json.loads((tmp_path / summary["final_policy"] / "generation_config.json").read_text())
    assert saved == GENERATION_CONFIG
    config = json.loads((tmp_path / summary["final_policy"] / "config.json").read_text())
    # config.json had none: generation_config.json's ids, then the tokenizer's pad
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, EOS_IDS, 0)
