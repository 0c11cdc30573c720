"""Token ids of a conversation as it grows: the opening prompt, then each observation as a delta.

The model's own sampled ids are kept as they are; only the environment's messages are tokenized, and only
once. An observation's ids are found by rendering the conversation twice with the chat template -- once
ending with the assistant turn, once with the observation and the generation prompt after it -- and encoding
what follows the assistant turn's content in the second. Every assistant turn is rendered with a placeholder
content (`PLACEHOLDER`), so the delta does not depend on how a template rewrites an assistant's text (Qwen3
strips reasoning from earlier turns, and renders an empty think block only on the last turn) and the model's
text is never re-encoded. The delta starts with the template's turn closer (the text after an assistant's
content, e.g. `<|im_end|>\\n`, as the first rendering ends), less the part the model already produced:
a turn that stopped on `<|im_end|>` gets `\\n`, one cut at `</tool_call>` or by its token limit gets all of it.
Encoding follows the BOS rule of `onpolicy.chat` (rendered text: `add_special_tokens=False`).
Left out: templates that close an assistant turn differently when more messages follow (refused with
`TemplateError`, which ends that trajectory), assistant `tool_calls` fields (the model's tool call is part of
its text).
"""
from __future__ import annotations

PLACEHOLDER = "@@onpolicy-assistant-turn@@"


class TemplateError(ValueError):
    """The chat template cannot give an observation's tokens as a delta (see the module doc)."""


class ChatDelta:
    """Renders one environment's conversations. `template_kwargs`: `data.chat_template_kwargs`;
    `tools`: the environment's JSON tool schemas (None: none)."""

    def __init__(self, tokenizer, template_kwargs: dict | None = None, tools: list | None = None):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("env: multi-turn rollouts need a tokenizer with a chat template (model.path's "
                             "tokenizer_config.json; the tiny tokenizer has one)")
        self.tokenizer = tokenizer
        self.kwargs = dict(template_kwargs or {})
        if tools:
            self.kwargs["tools"] = list(tools)

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **self.kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The opening prompt: the messages rendered with the generation prompt."""
        return self.encode(self.render(messages, True))

    def observation_ids(self, history: list[dict], turn_ids: list[int], stopped: bool,
                        observation: list[dict]) -> list[int]:
        """Ids that follow the model's turn `turn_ids` when `observation` comes next and the model answers.

        `history`: the conversation before this turn, assistant turns as `PLACEHOLDER` (see `placeholder_turn`).
        `stopped`: the turn ended on a stop token or string (then the closer may be partly in `turn_ids`)."""
        turn = placeholder_turn()
        closer = _after_placeholder(self.render(history + [turn], False))
        suffix = _after_placeholder(self.render(history + [turn] + observation, True))
        if not suffix.startswith(closer):
            raise TemplateError(f"the chat template closes an assistant turn with {closer!r} at the end of a "
                                f"conversation but not when an observation follows ({suffix[:len(closer)]!r})")
        produced = 0
        if stopped:
            raw = self.tokenizer.decode(list(turn_ids), skip_special_tokens=False)
            produced = max(k for k in range(len(closer) + 1) if raw.endswith(closer[:k]))
        return self.encode(suffix[produced:])


def _after_placeholder(text: str) -> str:
    at = text.rfind(PLACEHOLDER)
    if at < 0:
        raise TemplateError("the chat template dropped an assistant message's content")
    return text[at + len(PLACEHOLDER):]


def placeholder_turn() -> dict:
    return {"role": "assistant", "content": PLACEHOLDER}
