"""ModelConfig validation and HF config conversion; tiny/0.6B factories."""
import pytest
import torch

from onpolicy.model import ModelConfig
from onpolicy.model.tiny import qwen3_0_6b_config, tiny_config


def test_tiny_defaults_and_overrides():
    c = tiny_config()
    assert (c.architecture, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.intermediate_size, c.tie_word_embeddings, c.dtype) == (
        "qwen3", 128, 4, 4, 2, 64, 384, True, "float32")
    assert c.qk_norm and tiny_config(num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match="unknown field"):
        tiny_config(hiden_size=3)


@pytest.mark.parametrize("field,value,match", [
    ("architecture", "gpt2", "architecture.*qwen3, llama"),
    ("dtype", "float16", "dtype.*float32, bfloat16"),
    ("num_key_value_heads", 3, "num_key_value_heads.*divide"),
    ("head_dim", 31, "head_dim.*even"),
    ("hidden_size", 0, "hidden_size.*positive"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
])
def test_bad_fields_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_hf_round_trip():
    for c in (tiny_config(), qwen3_0_6b_config(), tiny_config(architecture="llama", attention_bias=True,
                                                               tie_word_embeddings=False, dtype="bfloat16")):
        assert ModelConfig.from_hf(c.to_hf()) == c
    assert not ModelConfig.from_hf(tiny_config(architecture="llama").to_hf()).qk_norm


def test_from_hf_rejects_unsupported():
    hf = tiny_config().to_hf()
    for key, val, match in [("rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, "dynamic.*batch"),
                            ("rope_scaling", {"type": "longrope", "short_factor": [1.0]},
                             "longrope needs original_max_position_embeddings"),
                            ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1.0},
                             "yarn.*original_max_position_embeddings"),
                            ("rope_parameters", {"rope_type": "llama3", "factor": 8.0}, "llama3.*low_freq_factor"),
                            ("hidden_act", "gelu", "hidden_act"), ("model_type", "gpt2", "model_type"),
                            ("use_sliding_window", True, "sliding"), ("head_dim", 80, "head_dim 80.*64"),
                            ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
                            ("layer_types", ["sliding_attention"], "layer_types")]:
        bad = dict(hf, **{key: val})
        if key == "model_type":
            bad["architectures"] = ["GPT2LMHeadModel"]
        if key == "rope_scaling":  # as published: rope_theta + rope_scaling, no rope_parameters
            del bad["rope_parameters"]
        with pytest.raises(ValueError, match=match):
            ModelConfig.from_hf(bad)


def test_from_hf_legacy_fields():
    hf = {"model_type": "llama", "vocab_size": 50, "hidden_size": 256, "intermediate_size": 96,
          "num_hidden_layers": 1, "num_attention_heads": 4, "rope_theta": 5e5, "torch_dtype": "bfloat16"}
    c = ModelConfig.from_hf(hf)
    assert (c.head_dim, c.num_key_value_heads, c.rope_theta, c.dtype) == (64, 4, 5e5, "bfloat16")
    assert ModelConfig.from_hf(hf, dtype="float32").dtype == "float32"


def test_core_import_needs_no_optional_packages():
    import subprocess
    import sys

    code = ("import sys, onpolicy.model; bad = [m for m in ('datasets', 'wandb', 'trl', 'vllm') if m in sys.modules];"
            " assert not bad, bad")
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)


def test_partial_rotary_default_rope_table():
    """Partial rotary without scaling: HF's default frequencies over the rotary dims, the rest cos 1 / sin 0."""
    from onpolicy import kernels
    from onpolicy.model.rope_scaling import build_rope_table

    c = tiny_config(architecture="llama", partial_rotary_factor=0.5, max_position_embeddings=40)
    table = build_rope_table(c, "cpu")
    rotated = kernels.rope_cache(40, 32, c.rope_theta)  # rotary_dim 32 of head_dim 64
    assert torch.equal(table[:, :16], rotated[:, :16]) and torch.equal(table[:, 32:48], rotated[:, 16:])
    assert (table[:, 16:32] == 1).all() and (table[:, 48:] == 0).all()
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        tiny_config(partial_rotary_factor=0.5)  # qwen3's per-head q/k norm
