"""PEFT format: our adapters saved with `save_adapter` load with `peft.PeftModel.from_pretrained` onto the
transformers base model and give our logits (fp32 tolerance); PEFT's own saved adapter loads into ours with the
same logits; our save -> load is bitwise; the merged export loads in transformers with the same logits; a
mismatched adapter config is refused naming the field. Skipped (with the reason) when peft is not installed."""
import json

import pytest
import torch

from lora_test_utils import packed, randomize_adapters
from onpolicy.lora import LoraArgs, attach_lora, load_adapter, save_adapter, save_merged
from onpolicy.model import load_pretrained

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[test]')")

SEQS = [[5, 17, 299, 3, 42, 8, 1], [250, 7], [9, 9, 120, 33, 64, 2, 77, 11, 100, 0, 4, 6, 2]]
PARTIAL = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def _hf_base(tmp_path, seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                   max_position_embeddings=128, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    transformers.Qwen3ForCausalLM(cfg).eval().save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def _ours(base, args, seed=1):
    model, _ = load_pretrained(base)
    attach_lora(model, args, seed=seed)
    randomize_adapters(model, seed, std=0.2)
    return model.eval()


def our_logits(model):
    ids, pos, meta = packed(SEQS)
    with torch.no_grad():
        return model.logits(model(ids, pos, meta))


def hf_logits(hf):
    with torch.no_grad():
        return torch.cat([hf(torch.tensor([s])).logits[0].float() for s in SEQS])


@pytest.mark.parametrize("targets,rslora", [(None, False), (PARTIAL, True)])
def test_ours_to_peft(tmp_path, targets, rslora):
    from transformers import AutoModelForCausalLM

    base = _hf_base(tmp_path)
    args = LoraArgs(r=4, alpha=8.0, use_rslora=rslora, **({} if targets is None else {"target_modules": targets}))
    ours = _ours(base, args)
    save_adapter(ours, str(tmp_path / "adapter"), base_model=base)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8 and saved["use_rslora"] == rslora
    hf = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").float().eval()
    plain = hf_logits(hf)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    got = hf_logits(peft_model)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapters change the logits
    torch.testing.assert_close(our_logits(ours), got, atol=2e-4, rtol=1e-4)


def test_peft_to_ours(tmp_path):
    """An adapter PEFT trained and saved (B made non-zero) starts a run: lora.init_from."""
    from transformers import AutoModelForCausalLM

    base = _hf_base(tmp_path, seed=2)
    hf = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").float().eval()
    cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=PARTIAL, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(hf, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "peft")
    args = LoraArgs(r=4, alpha=16, target_modules=PARTIAL)
    ours, _ = load_pretrained(base)
    attach_lora(ours, args)
    load_adapter(ours, str(tmp_path / "peft"))
    torch.testing.assert_close(our_logits(ours.eval()), hf_logits(peft_model.eval()), atol=2e-4, rtol=1e-4)


def test_save_load_bitwise_and_merged_export(tmp_path):
    from transformers import AutoModelForCausalLM

    base = _hf_base(tmp_path, seed=3)
    args = LoraArgs(r=4, alpha=8.0, target_modules=PARTIAL)
    ours = _ours(base, args, seed=4)
    for dtype in (torch.float32, torch.bfloat16):
        ours = ours.to(dtype)
        save_adapter(ours, str(tmp_path / "a"))
        again, _ = load_pretrained(base, dtype=dtype)
        attach_lora(again, args, seed=9)
        load_adapter(again, str(tmp_path / "a"))
        ref = our_logits(ours)
        assert torch.equal(our_logits(again.eval()), ref)
    ours = ours.float()
    save_merged(ours, str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").float().eval()
    torch.testing.assert_close(hf_logits(merged), our_logits(ours), atol=2e-4, rtol=1e-4)
    plain, _ = load_pretrained(str(tmp_path / "merged"))  # ours loads the merged weights as a plain model
    torch.testing.assert_close(our_logits(plain), our_logits(ours), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("change,field", [({"r": 8}, "has r = 4"), ({"alpha": 4.0}, "lora_alpha"),
                                          ({"use_rslora": True}, "use_rslora"),
                                          ({"target_modules": ["q_proj"]}, "target_modules")])
def test_mismatched_adapter_refused(tmp_path, change, field):
    base = _hf_base(tmp_path, seed=5)
    args = LoraArgs(r=4, alpha=8.0, target_modules=PARTIAL)
    save_adapter(_ours(base, args), str(tmp_path / "a"))
    other = LoraArgs(**{**dict(r=4, alpha=8.0, target_modules=PARTIAL), **change})
    model, _ = load_pretrained(base)
    attach_lora(model, other)
    with pytest.raises(ValueError) as e:
        load_adapter(model, str(tmp_path / "a"))
    assert str(e.value).startswith("lora.init_from:") and field in str(e.value)
    with pytest.raises(ValueError, match="lora.init_from: .* has no adapter_config.json"):
        load_adapter(model, str(tmp_path))
