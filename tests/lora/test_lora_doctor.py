"""scripts/doctor.py with LoRA adapters: bitwise equal on a tiny model with adapters (their ops traced), a
sampler-only bug in an adapter op is named, and `--adapter` attaches a saved PEFT adapter."""
import pytest
import torch

from lora_test_utils import lora_tiny
from onpolicy import kernels
from onpolicy.lora import save_adapter
from onpolicy.model import save_pretrained
from scripts import doctor


@pytest.fixture(scope="module")
def tiny():
    model, tok, _ = lora_tiny("float32", targets=["v_proj", "down_proj"])
    return model, tok


def test_doctor_lora_bitwise_equal_and_names_the_adapter_gemm(tiny, monkeypatch):
    model, tok = tiny
    rep = doctor.diagnose(model, tok, tok.encode("12+7="), max_tokens=3, batch=2)
    assert rep["equal"] and rep["logprob_equal"]
    real = kernels.lora_expand_add

    def sampler_only_bug(*a):
        out = real(*a)
        return out + 1e-3 if torch.is_inference_mode_enabled() else out

    monkeypatch.setattr(kernels, "lora_expand_add", sampler_only_bug)
    rep = doctor.diagnose(model, tok, tok.encode("12+7="), max_tokens=3, batch=2)
    assert not rep["equal"]
    assert rep["first_diff"][0].startswith("model.layers.0.self_attn.qkv_proj.lora:lora_expand_add")


def test_doctor_cli_adapter(tiny, tmp_path, capsys):
    model, tok = tiny
    save_pretrained(model, str(tmp_path / "policy"))
    save_adapter(model, str(tmp_path / "adapter"))
    ids = ",".join(str(i) for i in tok.encode("12+7="))
    argv = ["--model", str(tmp_path / "policy"), "--ids", "--prompt", ids, "--device", "cpu", "--max-tokens", "3"]
    assert doctor.main(argv + ["--adapter", str(tmp_path / "adapter")]) == 0
    with_adapter = capsys.readouterr().out
    assert doctor.main(argv) == 0
    assert int(with_adapter.split()[1]) > int(capsys.readouterr().out.split()[1])  # the adapter GEMMs were compared
