"""CharTokenizer: one id per character, decode round-trip, save / AutoTokenizer round-trip."""
from onpolicy.model.tiny import CHARS, CharTokenizer, tiny_config

TEXT = "Q: 12+7=? A: (19)!\n#'x' <y>; \"z\", a/b*c-d."


def test_one_id_per_char_and_round_trip():
    tok = CharTokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and len(set(ids)) == len(set(TEXT))
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode(CHARS)) == CHARS
    assert len(tok) == tiny_config().vocab_size == len(CHARS) + 4
    assert tok.convert_ids_to_tokens(tok.encode("ab")) == ["a", "b"]


def test_special_tokens():
    tok = CharTokenizer()
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode([5, tok.eos_token_id], skip_special_tokens=True) == tok.decode([5])
    assert tok.encode("~") == [tok.unk_token_id]  # outside the character set


def test_save_and_autotokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    CharTokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(TEXT) == CharTokenizer().encode(TEXT)
    assert loaded.decode(loaded.encode(TEXT)) == TEXT
    assert loaded.eos_token_id == 2 and loaded.pad_token_id == 0


def test_tiny_chars_widen_the_tokenizer_to_a_model_vocab():
    from onpolicy.model.tiny import tiny_chars

    assert tiny_chars() == tiny_chars(len(CHARS) + 4) == CHARS
    wide = CharTokenizer(tiny_chars(151936))
    assert len(wide) == 151936
    assert wide.encode(TEXT) == CharTokenizer().encode(TEXT)  # the default ids are kept
    top = list(range(len(CHARS) + 4, 151936, 7919)) + [151935]
    text = wide.decode(top)
    assert len(text) == len(top) and wide.encode(text) == top  # every id decodes to one character and back


def test_unknown_characters_are_reported_with_their_rate():
    from onpolicy.model.tiny import unknown_chars_warning

    assert unknown_chars_warning({"prompt": ["12+7=", TEXT], "answer": ["19", ""]}) is None
    message = unknown_chars_warning({"prompt": ["3×4=", "5×6="], "answer": ["12", "30"]})
    assert message.startswith("25% of prompt characters are not in the tiny tokenizer's alphabet")
    assert "'×' (2)" in message and "answer" not in message.split(":")[0]
    both = unknown_chars_warning({"prompt": ["3×4="], "answer": ["1²"]})
    assert both.startswith("25% of prompt characters and 50% of answer characters")


def test_the_trainer_warns_once_about_unknown_characters(tmp_path):
    import json

    from onpolicy.config import parse_args
    from onpolicy.data import load_prompts
    from onpolicy.model.tiny import CharTokenizer
    from onpolicy.build import warn_unknown_chars

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}×{b}=", "answer": str(a * b)}) + "\n"
                            for a in range(3) for b in range(3)))
    cfg = parse_args(["--data.dataset", str(data)])
    lines = []
    warn_unknown_chars(cfg, load_prompts(cfg.data, CharTokenizer()), lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: 25% of prompt characters") and "'×' (9)" in lines[0]
