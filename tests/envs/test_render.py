"""Observation tokens as a chat-template delta: the turn closer less what the model sampled, the observation and
the generation prompt; earlier turns are never re-rendered into tokens; templates that rewrite the last
assistant turn (Qwen3's think block) work; a template that closes turns inconsistently is refused."""
import pytest

from onpolicy.envs.render import PLACEHOLDER, ChatDelta, TemplateError
from tests.envs.conftest import IM_SPECIALS

QWEN3_LIKE = (  # the last assistant turn gets an empty think block; tool output goes in a user turn
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<result>\n{{ m.content }}\n</result><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
USER = [{"role": "user", "content": "2+2?"}]
TOOL = [{"role": "tool", "content": "4"}]


@pytest.fixture()
def chatml(chat_tokenizer):
    return chat_tokenizer(110, IM_SPECIALS, eos="<|im_end|>")


def test_delta_after_each_way_a_turn_ends(chatml):
    d = ChatDelta(chatml)
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    tail = "<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n"
    call = chatml.encode("<call>x</call>")
    assert chatml.decode(d.observation_ids(USER, call + [im_end], True, TOOL)) == "\n" + tail  # stopped on eos
    assert chatml.decode(d.observation_ids(USER, call, True, TOOL)) == "<|im_end|>\n" + tail    # stop string
    assert chatml.decode(d.observation_ids(USER, call + [im_end], False, TOOL)) == "<|im_end|>\n" + tail  # length
    # prompt + the model's ids + the delta spell the conversation the template renders
    prompt = d.prompt_ids(USER)
    text = chatml.decode(prompt + call + [im_end] + d.observation_ids(USER, call + [im_end], True, TOOL))
    whole = USER + [{"role": "assistant", "content": "<call>x</call>"}] + TOOL
    assert text == chatml.apply_chat_template(whole, tokenize=False, add_generation_prompt=True)


def test_delta_does_not_depend_on_earlier_turns_text(chatml):
    """Earlier assistant turns are rendered as placeholders: their text (and how a template would rewrite it)
    cannot change the observation's ids."""
    d = ChatDelta(chatml)
    history = USER + [{"role": "assistant", "content": PLACEHOLDER}] + TOOL
    ids = d.observation_ids(history, chatml.encode("ok"), False, [{"role": "user", "content": "more"}])
    assert chatml.decode(ids) == "<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"


def test_template_that_rewrites_the_last_turn(chatml):
    chatml.chat_template = QWEN3_LIKE
    d = ChatDelta(chatml)
    ids = d.observation_ids(USER, chatml.encode("<call>x</call>"), True, TOOL)
    assert chatml.decode(ids) == ("<|im_end|>\n<|im_start|>user\n<result>\n4\n</result><|im_end|>\n"
                                  "<|im_start|>assistant\n")


def test_inconsistent_closer_and_missing_template(chatml):
    chatml.chat_template = ("{% for m in messages %}{{ m.content }}{% if loop.last %}.{% else %}!{% endif %}"
                            "{% endfor %}")
    with pytest.raises(TemplateError, match="closes an assistant turn with '.' at the end"):
        ChatDelta(chatml).observation_ids(USER, [5], True, TOOL)
    chatml.chat_template = None
    with pytest.raises(ValueError, match="env: multi-turn rollouts need a tokenizer with a chat template"):
        ChatDelta(chatml)


def test_tools_reach_the_template(chatml):
    chatml.chat_template = "{{ tools[0].function.name }}:{% for m in messages %}{{ m.content }}{% endfor %}"
    assert chatml.decode(ChatDelta(chatml, tools=[{"function": {"name": "calc"}}]).prompt_ids(USER)) == "calc:2+2?"
