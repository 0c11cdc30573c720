"""Offline inputs for scripts/bench_cold_start.py: a random-weight HF checkpoint directory and a GSM8K-format
JSON-lines file, written locally (no hub, no download).

`write_checkpoint(path, shape)`: "0.6b" is Qwen3-0.6B's shape (`onpolicy.model.tiny.qwen3_0_6b_config`, bf16,
N(0, 0.02) weights from a seed), "tiny" the embedded family's shape in fp32; both with a `CharTokenizer` as wide
as the vocab and its minimal chat template, saved beside config.json + model.safetensors (what `model.path`
reads). `write_gsm8k(path, n)`: rows with "question" and "answer" ("... #### 72") columns, as the GSM8K train
split, made of the tokenizer's characters. Left out: the real Qwen3 BPE tokenizer and chat template (a
character tokenizer gives longer prompts: about 200 tokens per question with the config's system prompt).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SHAPES = ("0.6b", "tiny")
_NAMES = ("Ann", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal")
_ITEMS = ("apples", "pencils", "stickers", "books", "marbles", "cookies", "stamps", "shells")


def write_checkpoint(path: str | Path, shape: str, seed: int = 0) -> dict:
    """Write a random-weight checkpoint of `shape` (one of SHAPES) with its tokenizer into `path`; returns its
    config.json as a dict."""
    from onpolicy.model import save_pretrained
    from onpolicy.model.transformer import CausalLM, init_weights
    from onpolicy.model.tiny import TINY_CHAT_TEMPLATE, CharTokenizer, qwen3_0_6b_config, tiny_chars, tiny_config

    if shape not in SHAPES:
        raise ValueError(f"shape: {shape!r}; allowed: {', '.join(SHAPES)}")
    if shape == "0.6b":
        config = qwen3_0_6b_config()
    else:  # room for the gsm8k config's 512 + 512 tokens
        config = tiny_config(num_hidden_layers=2, max_position_embeddings=1024)
    model = CausalLM(config, init=False)
    init_weights(model, seed=seed)
    save_pretrained(model, str(path))
    CharTokenizer(tiny_chars(config.vocab_size), chat_template=TINY_CHAT_TEMPLATE).save_pretrained(str(path))
    return json.loads((Path(path) / "config.json").read_text())


def gsm8k_row(rng: random.Random) -> dict:
    """One GSM8K-style word problem with its worked answer and '#### <number>' line."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    have, boxes, per_box, gave = rng.randint(3, 40), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 9)
    total = have + boxes * per_box - gave
    question = (f"{name} has {have} {item}. {name} buys {boxes} boxes with {per_box} {item} in each box, then "
                f"gives {gave} {item} to a friend. How many {item} does {name} have now?")
    answer = (f"{name} buys {boxes} * {per_box} = {boxes * per_box} {item}. Then {name} has {have} + "
              f"{boxes * per_box} - {gave} = {total} {item}.\n#### {total}")
    return {"question": question, "answer": answer}


def write_gsm8k(path: str | Path, n: int, seed: int = 0) -> Path:
    """`n` GSM8K-format rows as JSON lines in `path` (parents created)."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(gsm8k_row(rng)) + "\n" for _ in range(n)))
    return path
