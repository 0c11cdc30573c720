"""Our top-level package is named `kernels`, like the Hugging Face hub package transformers probes for: with
ours importable, transformers must not take it for the hub package, and a tiny transformers Qwen3 must run."""
import importlib
import os

import pytest
import torch

import kernels

def test_import_kernels_is_ours():
    """`import kernels` resolves to onpolicy's package (repo checkout or installed), not the hub package."""
    assert os.path.basename(os.path.dirname(os.path.abspath(kernels.__file__))) == "kernels"
    assert hasattr(kernels, "token_logprobs") and hasattr(kernels, "invariant_mode")
    assert not hasattr(kernels, "kernelize") and not hasattr(kernels, "get_kernel")


def test_transformers_does_not_take_ours_for_hub_kernels():
    transformers = pytest.importorskip("transformers")
    import_utils = importlib.import_module("transformers.utils.import_utils")
    probe = getattr(import_utils, "is_kernels_available", None)
    if probe is None:
        pytest.skip(f"transformers {transformers.__version__} has no is_kernels_available")
    if hasattr(probe, "cache_clear"):
        probe.cache_clear()
    assert probe() is False
    importlib.import_module("transformers.integrations")  # hub-kernel glue imports cleanly with ours present


def test_tiny_transformers_qwen3_forward():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=64)
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, 97) and torch.isfinite(logits).all()
