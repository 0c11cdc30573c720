"""Chat data: message prompts rendered with the chat template, system prompts, chat_template_kwargs, the BOS
rule, and the completion form rewards receive (TRL's: messages for conversational data, strings otherwise)."""
import json

import pytest
import torch

from onpolicy.chat import completion_text, encode_prompt, reward_inputs
from onpolicy.config import ConfigError, DataArgs, RewardArgs
from onpolicy.data import load_prompts
from onpolicy.rewards import combine_rewards, get_reward, register_reward

CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": "12+7=?"}], "answer": "19"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3*3=?"}], "answer": "9"},
]
SPECIALS = {"<|im_start|>": 100, "<|im_end|>": 101}


def _jsonl(tmp_path, rows, name="chat.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def tok(chat_tokenizer):
    return chat_tokenizer(110, SPECIALS)


def test_message_prompts_render_through_the_template(tmp_path, tok):
    rows = load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS)), tok)
    assert rows[0]["prompt"] == "<|im_start|>user\n12+7=?<|im_end|>\n<|im_start|>assistant\n"
    assert rows[1]["prompt"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3*3=?<|im_end|>\n"
                                 "<|im_start|>assistant\n")  # the row's own system message
    assert rows[0]["conversational"] and rows[0]["prompt_messages"] == CHAT_ROWS[0]["prompt"]
    assert rows[0]["answer"] == "19"
    ids = encode_prompt(tok, rows[0])
    assert ids[0] == 100 and ids.count(101) == 1 and tok.decode(ids) == rows[0]["prompt"]


def test_system_prompt_and_template_kwargs_change_the_prompt(tmp_path, tok):
    path = _jsonl(tmp_path, CHAT_ROWS[:1])
    plain = load_prompts(DataArgs(dataset=path), tok)[0]["prompt"]
    system = load_prompts(DataArgs(dataset=path, system_prompt="Think."), tok)[0]
    assert system["prompt"] == "<|im_start|>system\nThink.<|im_end|>\n" + plain
    assert system["prompt_messages"][0] == {"role": "system", "content": "Think."}
    no_think = load_prompts(DataArgs(dataset=path, chat_template_kwargs={"enable_thinking": False}), tok)[0]
    assert no_think["prompt"] == plain + "<think>\n\n</think>\n\n"
    thinking = load_prompts(DataArgs(dataset=path, chat_template_kwargs={"enable_thinking": True}), tok)[0]
    assert thinking["prompt"] == plain
    # text prompts: wrapped as one user message with data.chat_template, the kwargs apply there too
    text = _jsonl(tmp_path, [{"q": "12+7=?"}], "text.jsonl")
    wrapped = load_prompts(DataArgs(dataset=text, prompt_column="q", chat_template=True,
                                    chat_template_kwargs={"enable_thinking": False}), tok)[0]
    assert wrapped["prompt"] == plain + "<think>\n\n</think>\n\n" and "conversational" not in wrapped


@pytest.mark.parametrize("rows,kw,match", [
    (CHAT_ROWS, {"system_prompt": "x"}, "data.system_prompt: row 1 of .* already starts with a system message"),
    ([{"q": "hi"}], {"prompt_column": "q", "system_prompt": "x"}, "data.system_prompt: text prompts are used as is"),
    ([{"q": "hi"}], {"prompt_column": "q", "chat_template_kwargs": {"a": 1}}, "data.chat_template_kwargs: text"),
    ([{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}], {},
     "row 0 of .* end with an assistant turn"),
    ([{"prompt": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}], {},
     "row 0 of .* message 0: needs a string 'role' and a string 'content'"),
    ([{"prompt": [{"role": "user"}]}], {}, "message 0: needs a string 'role' and a string 'content'"),
    ([{"prompt": []}], {}, "data.prompt_column: row 0 .* allowed: a string or a list of"),
    ([{"prompt": "a", "conversational": 1}], {}, r"data.dataset: .* has column\(s\) \['conversational'\]"),
])
def test_bad_chat_data(tmp_path, tok, rows, kw, match):
    with pytest.raises(ValueError, match=match):
        load_prompts(DataArgs(dataset=_jsonl(tmp_path, rows), **kw), tok)


def test_chat_template_kwargs_validated_at_config():
    with pytest.raises(ConfigError, match="data.chat_template_kwargs: got {'add_generation_prompt': False}"):
        DataArgs(chat_template_kwargs={"add_generation_prompt": False})
    with pytest.raises(ConfigError, match="data.chat_template_kwargs: expected a mapping"):
        DataArgs(chat_template_kwargs=["enable_thinking"])


def test_messages_need_a_chat_template(tmp_path, chat_tokenizer):
    with pytest.raises(ValueError, match="data.chat_template: chat-message prompts need a tokenizer with a chat"):
        load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS)), chat_tokenizer(110, SPECIALS, chat_template=None))


def test_bos_follows_the_tokenizer(tmp_path, chat_tokenizer):
    """Text used as is gets the BOS the tokenizer adds; a rendered template that writes its own BOS gets one."""
    llama = chat_tokenizer(110, SPECIALS, add_bos=True, chat_template="{{ bos_token }}" + (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"))
    text = load_prompts(DataArgs(dataset=_jsonl(tmp_path, [{"q": "1+1=?"}], "t.jsonl"), prompt_column="q"), llama)
    assert encode_prompt(llama, text[0]) == [1] + llama.encode("1+1=?", add_special_tokens=False)
    chat = load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS[:1])), llama)
    ids = encode_prompt(llama, chat[0])
    assert chat[0]["prompt"].startswith("<bos>user: 12+7=?") and ids[0] == 1 and ids.count(1) == 1
    no_bos = chat_tokenizer(110, SPECIALS)  # Qwen-like: the tokenizer adds nothing, the template writes no BOS
    assert 1 not in encode_prompt(no_bos, load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS[:1])), no_bos)[0])
    # the length filter counts the same ids: the 6-character prompt is 7 tokens with the BOS
    with pytest.raises(ValueError, match="no usable prompts"), pytest.warns(UserWarning, match="dropped 1 of 1"):
        load_prompts(DataArgs(dataset=_jsonl(tmp_path, [{"q": "1+1=?!"}], "t2.jsonl"), prompt_column="q",
                              max_prompt_tokens=6), llama)


def test_rewards_receive_messages_for_conversational_rows(tmp_path, tok):
    rows = load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS)), tok)
    prompts, completions = reward_inputs([rows[0], rows[1]], ["#### 19", "\\boxed{8}"])
    assert prompts == [CHAT_ROWS[0]["prompt"], CHAT_ROWS[1]["prompt"]]
    assert completions == [[{"role": "assistant", "content": "#### 19"}],
                           [{"role": "assistant", "content": "\\boxed{8}"}]]
    assert get_reward("math_answer")(prompts, completions, answer=["19", "9"]) == [1.0, 0.0]
    assert get_reward("math_answer_lenient")(prompts, completions, answer=["19", "8"]) == [1.0, 1.0]
    assert get_reward("format")(prompts, completions) == [1.0, 1.0]
    assert get_reward("format")(prompts, ["#### 1", "none"]) == [1.0, 0.0]  # strings still work
    text_rows = load_prompts(DataArgs(dataset=_jsonl(tmp_path, [{"q": "a"}], "t.jsonl"), prompt_column="q"), tok)
    assert reward_inputs(text_rows, ["x"]) == (["a"], ["x"])
    assert completion_text([{"role": "assistant", "content": "y"}]) == "y"
    with pytest.raises(ValueError, match="completion: expected a string or a list"):
        completion_text(5)


def test_scoring_passes_messages_and_columns(tmp_path, tok):
    """score_rollouts -> combine_rewards: a reward written for TRL's conversational form sees messages, the
    data columns arrive as kwargs, the internal chat fields do not."""
    from onpolicy.config import ExperimentConfig
    from onpolicy.trainer.rollout import Rollout
    from onpolicy.trainer.scoring import score_rollouts

    seen = {}

    @register_reward("test_chat_form")
    def chat_form(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, keys=sorted(kwargs))
        return [float(c[0]["content"] == "19") for c in completions]

    rows = load_prompts(DataArgs(dataset=_jsonl(tmp_path, CHAT_ROWS)), tok)
    ro = Rollout(group_size=2, prompt_ids=[[5]] * 4, completion_ids=[[6]] * 4,
                 sampler_logprobs=[torch.zeros(1)] * 4, texts=["19", "18", "9", "19"],
                 finish_reasons=["stop"] * 4, group_index=[0, 0, 1, 1])
    cfg = ExperimentConfig(rewards=[RewardArgs("test_chat_form")])
    scored = score_rollouts(cfg, rows, ro)
    assert scored.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert seen["completions"][0] == [{"role": "assistant", "content": "19"}]
    assert seen["prompts"][2] == CHAT_ROWS[1]["prompt"]
    assert seen["keys"] == ["answer", "completion_ids", "trainer_state"]  # columns plus TRL's keyword arguments
    total, _ = combine_rewards([RewardArgs("math_answer")], seen["prompts"], seen["completions"],
                               answer=["19", "19", "9", "9"])
    assert total == [0.0, 0.0, 0.0, 0.0]  # no marked answer in these completions
