"""Environment test helpers: a scripted environment with ragged turn counts, tiny engines with chat templates."""
import pytest

from onpolicy.engine import LLM, EngineConfig
from onpolicy.model.tiny import TINY_CHAT_TEMPLATE, CharTokenizer, build_tiny

IM_SPECIALS = {"<|im_start|>": 100, "<|im_end|>": 101, "<|endoftext|>": 102}


class Scripted:
    """Ends after `row["turns"]` turns; its observations (tool messages of `row["obs"]` characters) vary in
    length; reward 0.5 per turn, 1.0 on the last."""

    def reset(self, row):
        self.row, self.turns = row, 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, turn):
        self.turns += 1
        if self.turns >= self.row["turns"]:
            return [], 1.0, True
        return [{"role": "tool", "content": "o" * (self.row["obs"] + self.turns)}], 0.5, False


def scripted_rows(n: int) -> list[dict]:
    return [{"prompt": f"q{i}" + "x" * (i % 5), "turns": 1 + i % 4, "obs": i % 3, "answer": "1"} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_chat():
    """(model, tokenizer) with the tiny chat template (`<role>:content` lines, no special tokens)."""
    model, _ = build_tiny(seed=1, head_dim=64, num_hidden_layers=1, max_position_embeddings=256)
    return model.eval(), CharTokenizer(chat_template=TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def chatml(request):
    """(model, tokenizer) with a ChatML template whose <|im_start|> / <|im_end|> are special tokens."""
    from tests.conftest import build_chat_tokenizer

    model, _ = build_tiny(seed=2, head_dim=64, num_hidden_layers=1, vocab_size=110, max_position_embeddings=256)
    return model.eval(), build_chat_tokenizer(110, IM_SPECIALS, eos="<|im_end|>")


def engine(model, tok, **kw):
    return LLM(model, tok, EngineConfig(**{"num_blocks": 256, "block_size": 8, "max_num_batched_tokens": 256, **kw}))
