"""AttentionMetadata is built once and validated once per forward; layers trust it (no host sync per layer)."""
import importlib

import pytest
import torch

from onpolicy.model import AttentionMetadata, CausalLM
from onpolicy.model import metadata as metadata_mod
from onpolicy.model.tiny import tiny_config

attention_mod = importlib.import_module("onpolicy.kernels.attention")


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_training_forward_validates_once_and_builds_metadata_once(monkeypatch):
    model = CausalLM(tiny_config(num_hidden_layers=3))
    validations = _count_calls(monkeypatch, metadata_mod, "check_attention_metadata")
    builds = _count_calls(monkeypatch, attention_mod, "training_metadata")
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    meta = AttentionMetadata.for_training(cu)
    ids = torch.randint(0, model.config.vocab_size, (12,))
    pos = torch.tensor(list(range(5)) + list(range(7)))
    model(ids, pos, meta)
    assert len(validations) == 1, "metadata must be validated once per forward, not per layer"
    assert len(builds) == 0, "layers must use the metadata built by for_training, not rebuild it"


def test_forward_rejects_bad_metadata_before_compute():
    model = CausalLM(tiny_config())
    meta = AttentionMetadata.for_training(torch.tensor([0, 5, 11], dtype=torch.int32))  # 11 != 12 tokens
    with pytest.raises(ValueError, match="end at q.shape\\[0\\]=12"):
        model(torch.zeros(12, dtype=torch.long), torch.zeros(12, dtype=torch.long), meta)


def test_training_metadata_has_no_unused_fields():
    meta = AttentionMetadata.for_training(torch.tensor([0, 3, 70], dtype=torch.int32))
    assert meta.block_table.shape == (2, 1) and meta.slot_mapping is None
    assert not hasattr(meta, "num_seqs") and not hasattr(meta, "max_seqlen_q")
