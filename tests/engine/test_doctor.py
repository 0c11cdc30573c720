"""scripts/doctor.py: reports "bitwise equal" on the tiny model, and names the op when one is perturbed."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.model.tiny import build_tiny
from scripts import doctor


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=3, head_dim=64, num_hidden_layers=2)
    return model.eval(), tok


def test_doctor_bitwise_equal(tiny):
    model, tok = tiny
    rep = doctor.diagnose(model, tok, tok.encode("12+7="), max_tokens=4, batch=3)
    assert rep["equal"] and rep["logprob_equal"] and rep["first_diff"] is None
    assert rep["num_compared"] >= 2 * 10  # every layer's modules and ops were compared


def test_doctor_names_the_first_differing_op(tiny, monkeypatch):
    model, tok = tiny
    real = kernels.silu_mul

    def sampler_only_bug(gate, up):  # the engine runs under inference_mode, the trainer pass does not
        out = real(gate, up)
        return out + 1e-3 if torch.is_inference_mode_enabled() else out

    monkeypatch.setattr(kernels, "silu_mul", sampler_only_bug)
    rep = doctor.diagnose(model, tok, tok.encode("12+7="), max_tokens=3, batch=2)
    assert not rep["equal"]
    assert rep["first_diff"][0] == "model.layers.0.mlp:silu_mul"
    assert rep["first_diff"][1] == pytest.approx(1e-3, rel=1e-2)
