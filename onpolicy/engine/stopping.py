"""Stop rules of one request: which sampled token ids end it and which strings are searched in its text.

A completion ends ("stop") on a token of `StopRule.token_ids`: every eos id of the model (the tokenizer's eos
plus those of the checkpoint's generation_config.json, `engine_eos_ids`; all skipped under ignore_eos), the
request's `stop_token_ids`, and the ids of stop strings that are special tokens (below). The stop token
stays in the completion's tokens (it was sampled and has a logprob) and, being special, not in its text.

Stop strings, the decoding rule: a completion's text is decoded without special tokens (as vLLM's default
`skip_special_tokens=True` and TRL's `batch_decode(..., skip_special_tokens=True)`), and text stop strings are
searched in that text. A stop string that is exactly one special token of the tokenizer (a token decoding
drops, e.g. `<|endoftext|>`, `<|im_end|>`, `</s>`) would never appear there, so it stops when that token is
sampled instead. Added tokens that are not special (Qwen3's `<think>`) are kept by decoding and match as text.
A stop string that holds a special token among other text cannot be matched by either rule and is refused.

Every decision reads only the request's own tokens, so it does not depend on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopRule:
    token_ids: frozenset      # sampled ids that end the completion
    strings: tuple            # stop strings searched in the text decoded without special tokens


def engine_eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus the eos ids of the model's generation settings (when it was loaded from a
    checkpoint directory, onpolicy.model.generation_config)."""
    settings = getattr(model, "generation_settings", None)
    if settings is not None:
        return settings.eos_token_ids(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [eos]


def special_tokens(tokenizer) -> dict[str, int]:
    """content -> id of every token that decoding with skip_special_tokens=True drops (the added tokens marked
    special); {} for a tokenizer without `added_tokens_decoder`."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {tok.content: i for i, tok in added.items() if getattr(tok, "special", False)}


def stop_rule(params, eos_ids, specials: dict[str, int], where: str) -> StopRule:
    """The StopRule of a validated SamplingParams. `where` names the request in errors (e.g. "params[3]")."""
    ids = set() if params.ignore_eos else set(eos_ids)
    ids.update(params.stop_token_ids or ())
    strings = []
    for s in params.stop or ():
        if s in specials:
            ids.add(specials[s])
            continue
        inner = next((sp for sp in specials if sp in s), None)
        if inner is not None:
            raise ValueError(f"{where}.stop: {s!r} contains the special token {inner!r}, which decoding drops; "
                             "allowed: a special token alone, or text without special tokens")
        strings.append(s)
    return StopRule(token_ids=frozenset(ids), strings=tuple(strings))


def find_stop(text: str, strings, start: int) -> int | None:
    """Position of the earliest stop string found in text[start:] (searched from `start`), else None."""
    hits = [pos for s in strings if (pos := text.find(s, start)) >= 0]
    return min(hits) if hits else None
