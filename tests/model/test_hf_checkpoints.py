"""HF checkpoints: transformers Qwen3/Llama -> ours (single file, sharded, tied/untied, bias) -> same logits;
ours -> save_pretrained -> transformers loads -> same logits. Nothing is downloaded."""
import json

import pytest
import torch

from model_test_utils import packed, random_hf_model
from onpolicy.model import CausalLM, load_pretrained, load_tokenizer, save_pretrained
from onpolicy.model.tiny import CharTokenizer, build_tiny

SEQS = [[5, 17, 299, 3, 42, 8, 1], [250, 7], [9, 9, 120, 33, 64, 2, 77, 11, 100, 0, 4, 6, 2]]


def our_logits(model, seqs):
    ids, pos, meta = packed(seqs)
    with torch.no_grad():
        return model.logits(model(ids, pos, meta))


def hf_logits(hf, seqs):
    with torch.no_grad():
        return torch.cat([hf(torch.tensor([s])).logits[0].float() for s in seqs])


CASES = [("qwen3", True, {}), ("qwen3", False, {"head_dim": 128}), ("llama", False, {"attention_bias": True}),
         ("llama", True, {})]


@pytest.mark.parametrize("arch,tied,kw", CASES)
def test_load_transformers_checkpoint(tmp_path, arch, tied, kw):
    hf = random_hf_model(arch, tied, **kw)
    hf.save_pretrained(tmp_path)
    model, config = load_pretrained(str(tmp_path))
    assert (config.architecture, config.tie_word_embeddings, config.qk_norm) == (arch, tied, arch == "qwen3")
    assert config.attention_bias == kw.get("attention_bias", False)
    assert config.head_dim == kw.get("head_dim", 64)
    torch.testing.assert_close(our_logits(model, SEQS), hf_logits(hf, SEQS), atol=2e-4, rtol=1e-4)


def test_load_sharded_checkpoint(tmp_path):
    hf = random_hf_model("qwen3", False, seed=1)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # really sharded
    model, _ = load_pretrained(str(tmp_path))
    torch.testing.assert_close(our_logits(model, SEQS), hf_logits(hf, SEQS), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,tied,kw", [CASES[0], CASES[2]])
def test_save_then_transformers_loads(tmp_path, arch, tied, kw):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    random_hf_model(arch, tied, seed=2, **kw).save_pretrained(src)
    ours, _ = load_pretrained(str(src))
    save_pretrained(ours, str(tmp_path / "out"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").float().eval()
    torch.testing.assert_close(hf_logits(hf, SEQS), our_logits(ours, SEQS), atol=2e-4, rtol=1e-4)
    again, _ = load_pretrained(str(tmp_path / "out"))  # ours -> ours is exact
    for (n, a), (_, b) in zip(ours.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n


def test_tiny_round_trip_with_tokenizer(tmp_path):
    model, tok = build_tiny(seed=3, num_hidden_layers=1)
    save_pretrained(model, str(tmp_path))
    tok.save_pretrained(tmp_path)
    loaded, config = load_pretrained(str(tmp_path), dtype="bfloat16")
    assert config == model.config.replace(dtype="bfloat16")
    assert loaded.lm_head_weight.dtype == torch.bfloat16 and loaded.lm_head is None
    assert torch.equal(loaded.lm_head_weight, model.lm_head_weight.bfloat16())
    assert load_tokenizer(str(tmp_path)).encode("1+2=3") == CharTokenizer().encode("1+2=3")


def test_build_tiny_is_seeded():
    a, _ = build_tiny(seed=7, num_hidden_layers=1)
    b, _ = build_tiny(seed=7, num_hidden_layers=1)
    c, _ = build_tiny(seed=8, num_hidden_layers=1)
    w = lambda m: m.model.layers[0].self_attn.qkv_proj.weight  # noqa: E731
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert abs(float(w(a).detach().std()) - 0.02) < 0.002


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(str(tmp_path))
    model, _ = build_tiny(num_hidden_layers=1)
    save_pretrained(model, str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=2)))
    with pytest.raises(ValueError, match="missing parameters.*layers.1"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=100)))
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained(str(tmp_path), dtype="float16")
    with pytest.raises(ValueError, match="CausalLM"):
        CausalLM(cfg)
