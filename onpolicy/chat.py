"""Chat data: prompts rendered with the tokenizer's chat template, the BOS rule, and the completion form rewards see.

Prompt forms (`data.prompt_column`), as TRL's:
- text: used as is, or, with `data.chat_template: true`, wrapped as one user message and rendered;
- chat messages (TRL's conversational format, a list of `{"role", "content"}` dicts ending with a user or tool
  turn): always rendered with the chat template, `add_generation_prompt=True`.
System prompts: a row's own first message with role "system" (per-row, as TRL and verl data carry it), or
`data.system_prompt`, put first in every rendered prompt. Both at once is refused (one source of truth per run).
`data.chat_template_kwargs` go to `apply_chat_template` (template variables, e.g. Qwen3's
`enable_thinking: false`); they and `data.system_prompt` need a rendered prompt and are refused for text used
as is.

BOS rule (the tokenizer's own): text used as is is encoded with `add_special_tokens=True`, so it gets the BOS
(and whatever else) the tokenizer adds, e.g. Llama base models; rendered text is encoded with
`add_special_tokens=False`, since a template that wants a BOS writes it (`{{ bos_token }}`) -- never two.
This is what TRL does (`tokenizer(text=prompts)` vs `apply_chat_template(tokenize=True)`).

Rows keep two fields for this (reserved names): `prompt_messages` (the messages rendered; absent for text used
as is) and `conversational` (True when the source prompt was messages; else absent). Rewards then get, as from TRL: for
conversational rows `prompts` = the messages and each completion `[{"role": "assistant", "content": text}]`;
otherwise both as strings. Left out: multi-turn rollouts, tool schemas, multimodal content parts, assistant
prefills (a conversation ending with an assistant turn).
"""
from __future__ import annotations

PROMPT_MESSAGES, CONVERSATIONAL = "prompt_messages", "conversational"
RESERVED_ROW_KEYS = ("prompt", PROMPT_MESSAGES, CONVERSATIONAL)
# apply_chat_template arguments onpolicy sets or that change what it returns: not template variables
_RESERVED_TEMPLATE_ARGS = ("conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message",
                           "return_dict", "return_tensors", "return_assistant_tokens_mask", "padding", "truncation",
                           "max_length", "chat_template", "tokenizer_kwargs")


def chat_template_kwargs_ok(kwargs: dict) -> bool:
    """Whether every key is a template variable name (an identifier, not an argument onpolicy sets)."""
    return all(isinstance(k, str) and k.isidentifier() and k not in _RESERVED_TEMPLATE_ARGS for k in kwargs)


def is_chat_messages(value) -> bool:
    """Whether a prompt value is in the conversational form (a list of dicts), valid or not."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) for m in value)


def _checked_messages(value, where: str) -> list[dict]:
    if not is_chat_messages(value):
        raise ValueError(f"{where} has a prompt {value!r:.80}; allowed: a string or a non-empty list of "
                         "{role, content} messages")
    for j, m in enumerate(value):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where} message {j}: needs a string 'role' and a string 'content', got {m!r:.80} "
                             "(content parts are not supported)")
    if value[-1]["role"] == "assistant":
        raise ValueError(f"{where}: the messages end with an assistant turn; allowed: messages ending with a user "
                         "or tool turn (the generation prompt follows them)")
    return [dict(m) for m in value]


def render_prompt(value, tokenizer, data_args, where: str) -> dict:
    """`{"prompt": text the engine sees}`, plus `"prompt_messages"` when rendered and `"conversational": True`
    for chat-message prompts (rows of text used as is keep exactly their source columns).
    `where` names the row in errors, e.g. "data.prompt_column: row 3 of 'x.jsonl'"."""
    conversational = not isinstance(value, str)
    if not conversational and not data_args.chat_template:
        for name in ("system_prompt", "chat_template_kwargs"):
            if getattr(data_args, name):
                raise ValueError(f"data.{name}: text prompts are used as is without data.chat_template: true; "
                                 "allowed: empty, or set data.chat_template: true or use chat-message prompts")
        return {"prompt": value}
    messages = _checked_messages(value, where) if conversational else [{"role": "user", "content": value}]
    if data_args.system_prompt:
        if messages[0]["role"] == "system":
            raise ValueError(f"data.system_prompt: {where.split(': ', 1)[-1]} already starts with a system message; "
                             "allowed: null when the rows carry their own system messages")
        messages.insert(0, {"role": "system", "content": data_args.system_prompt})
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        what = "chat-message prompts need" if conversational else "data.chat_template: true needs"
        raise ValueError(f"data.chat_template: {what} a tokenizer with a chat template")
    kwargs = dict(data_args.chat_template_kwargs or {})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return {"prompt": text, PROMPT_MESSAGES: messages, **({CONVERSATIONAL: True} if conversational else {})}


def encode_prompt(tokenizer, row: dict) -> list[int]:
    """A row's prompt token ids under the BOS rule (module doc)."""
    rendered = row.get(PROMPT_MESSAGES) is not None
    return list(tokenizer.encode(row["prompt"], add_special_tokens=not rendered))


def reward_inputs(rows: list[dict], texts: list[str]) -> tuple[list, list]:
    """(prompts, completions) for the reward functions, one per completion (`rows[i]` is completion i's row):
    messages for conversational rows, strings otherwise."""
    prompts, completions = [], []
    for row, text in zip(rows, texts):
        if row.get(CONVERSATIONAL):
            prompts.append(row[PROMPT_MESSAGES])
            completions.append([{"role": "assistant", "content": text}])
        else:
            prompts.append(row["prompt"])
            completions.append(text)
    return prompts, completions


def completion_text(completion) -> str:
    """The text of a completion in either form: a string, or messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if is_chat_messages(completion) and isinstance(completion[-1].get("content"), str):
        return completion[-1]["content"]
    raise ValueError(f"completion: expected a string or a list of {{role, content}} messages, got {completion!r:.80}")
