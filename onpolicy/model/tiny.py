"""Tiny models for CPU tests and the embedded task, plus the Qwen3-0.6B shape for GPU benches.

`CharTokenizer()` is a `transformers.PreTrainedTokenizerFast` built offline: one token per character of a
fixed set (`tiny_chars` widens it to a model's vocab), specials `<pad>` `<bos>` `<eos>` `<unk>` first (ids 0..3).
Characters outside the set map to `<unk>`; `unknown_chars_warning` measures how many of a data set's do (the
trainer warns once, at load). `TINY_CHAT_TEMPLATE` is a minimal chat template over that alphabet (each message
`<role initial>:<content>` and a newline; the generation prompt `a:`), which runs of the tiny model use for
chat data and environments. Left out: any subword merging, tool schemas in the template.
"""
from __future__ import annotations

import string

from onpolicy.model.config import ModelConfig
from onpolicy.model.transformer import CausalLM, init_weights

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}a:{% endif %}")
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " " + "+-*/=()<>.,:;?!#'\"\n"


def CharTokenizer(chars: str = CHARS, chat_template: str | None = None):  # noqa: N802 -- named like its class
    """A PreTrainedTokenizerFast with one id per character of `chars` (no specials added on encode);
    `chat_template`: its template (e.g. TINY_CHAT_TEMPLATE), None = none."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
        raise ValueError("CharTokenizer: chars must be a non-empty string of distinct characters")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=1 << 30,
    )
    fast.chat_template = chat_template
    return fast


_PUNCTUATION = "".join(c for c in CHARS if not c.isalnum() and c != " ")


def unknown_chars_warning(columns: dict[str, list[str]], chars: str = CHARS, examples: int = 5) -> str | None:
    """One warning line when texts (`{"prompt": [...], "answer": [...]}`) hold characters outside `chars`
    (each becomes `<unk>`): the share per column and the most frequent such characters; None when all are known."""
    from collections import Counter

    known = set(chars)
    unknown: Counter = Counter()
    rates = []
    for name, texts in columns.items():
        texts = [t for t in texts if t]
        total = sum(len(t) for t in texts)
        missing = Counter(c for t in texts for c in t if c not in known)
        if missing:
            unknown.update(missing)
            rates.append(f"{100 * sum(missing.values()) / total:.2g}% of {name} characters")
    if not unknown:
        return None
    shown = ", ".join(f"{c!r} ({n})" for c, n in unknown.most_common(examples))
    return (f"{' and '.join(rates)} are not in the tiny tokenizer's alphabet and become <unk> (a completion cannot "
            f"produce them): {shown}; the alphabet is digits, ASCII letters, space and {_PUNCTUATION!r}")


def tiny_chars(vocab_size: int | None = None) -> str:
    """`CHARS`, extended (for a model.tiny vocab_size above the char set, e.g. Qwen3's 151,936 for benches) with
    distinct code points from U+4E00 on, skipping surrogates, so that every model id decodes to a character."""
    n = 0 if vocab_size is None else vocab_size - len(SPECIAL_TOKENS) - len(CHARS)
    if n <= 0:
        return CHARS
    points = (c for c in range(0x4E00, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    return CHARS + "".join(chr(next(points)) for _ in range(n))


def tiny_config(**overrides) -> ModelConfig:
    """Qwen3-style tiny config (vocab = CharTokenizer size); unknown override names raise ValueError."""
    base = ModelConfig(
        architecture="qwen3", vocab_size=len(SPECIAL_TOKENS) + len(CHARS), hidden_size=128,
        intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True,
        attention_bias=False, dtype="float32",
    )
    return base.replace(**overrides)


def qwen3_0_6b_config(**overrides) -> ModelConfig:
    """Qwen3-0.6B's shape (random weights via `init_weights`; bf16 by default)."""
    base = ModelConfig(
        architecture="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=40960, tie_word_embeddings=True, attention_bias=False, dtype="bfloat16",
    )
    return base.replace(**overrides)


def build_tiny(seed: int = 0, **overrides):
    """(CausalLM, CharTokenizer) with deterministic N(0, 0.02) weights from `seed`."""
    tokenizer = CharTokenizer()
    config = tiny_config(**overrides)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"build_tiny: vocab_size {config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    model = CausalLM(config, init=False)
    init_weights(model, seed=seed)
    return model, tokenizer
