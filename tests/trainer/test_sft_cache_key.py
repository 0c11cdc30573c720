"""The SFT warm-start cache key covers what the warm-start's bits depend on (torch build, CPU kernel set,
device, kernel/model source) and not the CPU thread count (which no longer changes any bit)."""
import torch

from onpolicy.model import CausalLM
from onpolicy.model.tiny import tiny_config
from onpolicy.trainer import sft


def _key(model):
    return sft.sft_cache_key(model, [[1, 2]], [[3]], steps=2, lr=1e-3, batch_size=4, seed=0)


def test_key_ignores_thread_count():
    model = CausalLM(tiny_config())
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _key(model)
        torch.set_num_threads(2)
        two = _key(model)
    finally:
        torch.set_num_threads(old)
    assert one == two


def test_key_changes_with_torch_build_and_source(monkeypatch):
    model = CausalLM(tiny_config())
    base = _key(model)
    real = sft.numerics_fingerprint
    monkeypatch.setattr(sft, "numerics_fingerprint", lambda device: {**real(device), "torch": "0.0.0"})
    assert _key(model) != base
    monkeypatch.setattr(sft, "numerics_fingerprint", lambda device: {**real(device), "source": "edited"})
    assert _key(model) != base
    fp = real("cpu")
    assert set(fp) == {"torch", "cpu_capability", "device", "cuda", "source"} and len(fp["source"]) == 64
