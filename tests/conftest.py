"""Test setup: determinism on, Triton interpreter on CPU-only machines (tiny shapes), `gpu` marker skips."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit runs: lets CPU tests execute the Triton kernels (slowly).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from onpolicy import determinism  # noqa: E402

determinism.enable(seed=0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run with -m gpu on the H100)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CHATML_TEMPLATE = (  # Qwen3's shape: ChatML, and an empty think block when enable_thinking is false
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}")


def build_chat_tokenizer(vocab_size: int | None = None, specials: dict | None = None, eos: str = "<eos>",
                         add_bos: bool = False, chat_template: str | None = CHATML_TEMPLATE):
    """A transformers tokenizer built offline: CharTokenizer's ids (one per character, `<pad> <bos> <eos> <unk>`
    first), then special tokens `<|reserved_i|>` up to `vocab_size`; `specials` renames ids (name -> id, e.g.
    {"<|im_end|>": 140}); `add_bos`: encode with add_special_tokens=True prepends `<bos>` (as Llama's tokenizer)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from onpolicy.model.tiny import CHARS, SPECIAL_TOKENS

    names = list(SPECIAL_TOKENS) + list(CHARS)
    names += [f"<|reserved_{i}|>" for i in range(len(names), vocab_size or len(names))]
    for name, i in (specials or {}).items():
        names[i] = name
    vocab = {name: i for i, name in enumerate(names)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    extra = [n for n in names if n.startswith("<|")]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token=eos,
                                   unk_token="<unk>", additional_special_tokens=extra,
                                   clean_up_tokenization_spaces=False, model_max_length=1 << 30)
    fast.chat_template = chat_template
    return fast


@pytest.fixture()
def chat_tokenizer():
    """`build_chat_tokenizer` (a factory: tests pick the vocab, specials and template)."""
    return build_chat_tokenizer
