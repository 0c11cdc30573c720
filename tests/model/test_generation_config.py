"""generation_config.json and config.json's bos/eos/pad ids: read on load, written on save, reloaded by
transformers as the original; a checkpoint without them (the tiny model) gets the tokenizer's ids."""
import json

import pytest

from model_test_utils import random_hf_model
from onpolicy.model import load_pretrained, save_pretrained
from onpolicy.model.generation_config import GenerationSettings, read_generation_settings
from onpolicy.model.tiny import CharTokenizer, build_tiny

QWEN25_INSTRUCT = {  # the shape of Qwen2.5-*-Instruct's file (ids scaled into the tiny vocab)
    "bos_token_id": 250, "pad_token_id": 250, "do_sample": True, "eos_token_id": [251, 250],
    "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
}


def _ids(config) -> dict:
    return {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def test_round_trip_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    src, out = tmp_path / "src", tmp_path / "out"
    hf = random_hf_model("qwen3", True, seed=5, bos_token_id=250, eos_token_id=251, pad_token_id=250)
    hf.generation_config = GenerationConfig(**QWEN25_INSTRUCT)
    hf.save_pretrained(src)
    ours, _ = load_pretrained(str(src))
    assert ours.generation_settings.eos_token_ids() == [251, 250]
    save_pretrained(ours, str(out))
    original = GenerationConfig.from_pretrained(src).to_dict()
    reloaded = GenerationConfig.from_pretrained(out).to_dict()
    assert reloaded == original and reloaded["eos_token_id"] == [251, 250] and reloaded["temperature"] == 0.7
    again = AutoModelForCausalLM.from_pretrained(out)
    assert _ids(again.config) == _ids(hf.config) == {"bos_token_id": 250, "eos_token_id": 251, "pad_token_id": 250}
    assert again.generation_config.eos_token_id == [251, 250]
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 251


def test_llama3_style_list_in_config_json(tmp_path):
    from transformers import AutoConfig

    src = tmp_path / "src"
    random_hf_model("llama", False, seed=6, bos_token_id=1, eos_token_id=[2, 7, 9]).save_pretrained(src)
    ours, _ = load_pretrained(str(src))
    assert ours.generation_settings.eos_token_ids(CharTokenizer()) == [2, 7, 9]
    save_pretrained(ours, str(tmp_path / "out"))
    assert AutoConfig.from_pretrained(tmp_path / "out").eos_token_id == [2, 7, 9]


def test_checkpoint_without_files_gets_the_tokenizers_ids(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    from onpolicy.trainer.checkpoint import POLICY_DIR, save_checkpoint
    from onpolicy.build import attach_generation_settings

    model, tok = build_tiny(seed=1, num_hidden_layers=1)
    lines = []
    attach_generation_settings(model, tok, log=lines.append)
    assert lines == ["generation: completions stop on eos ids [2]"]
    path = save_checkpoint(tmp_path, step=1, model=model, tokenizer=tok) / POLICY_DIR
    gen = GenerationConfig.from_pretrained(path)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert _ids(AutoModelForCausalLM.from_pretrained(path).config) == {"bos_token_id": 1, "eos_token_id": 2,
                                                                       "pad_token_id": 0}
    assert read_generation_settings(str(path)).eos_token_ids() == [2]


def test_sampling_defaults_are_logged_not_applied():
    settings = GenerationSettings(generation_config=dict(QWEN25_INSTRUCT), token_ids={"eos_token_id": 251})
    line = settings.describe(tokenizer=CharTokenizer())
    assert line.startswith("generation: completions stop on eos ids [2, 251, 250]")
    assert "sampling defaults (do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05) " \
           "are not applied" in line
    assert GenerationSettings(token_ids={"eos_token_id": 7}).eos_token_ids() == [7]  # config.json alone


@pytest.mark.parametrize("content,match", [
    ({"eos_token_id": "x"}, "generation_config.json: eos_token_id: must be null, an int >= 0"),
    ({"eos_token_id": []}, "generation_config.json: eos_token_id"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_generation_config(tmp_path, content, match):
    (tmp_path / "generation_config.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        read_generation_settings(str(tmp_path))
