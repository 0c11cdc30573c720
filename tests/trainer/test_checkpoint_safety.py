"""Checkpoint safety: no pickle in trainer state (a crafted pickle never runs), sha256 manifest verified at load,
an older pickle-format checkpoint refused, resume finds the newest complete checkpoint without `latest`."""
import pickle
from pathlib import Path

import pytest
import torch

from onpolicy.trainer import checkpoint as ck

tiny = pytest.importorskip("onpolicy.model.tiny")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, head_dim=64)


def _parts(dtype="float32"):
    from onpolicy.trainer.precision import MasterWeightAdamW

    model, tok = tiny.build_tiny(seed=0, dtype=dtype, **SMALL)
    opt = MasterWeightAdamW(model.parameters(), lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad()
    return model, tok, opt


class _Payload:
    """Unpickling this writes a file: proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_trainer_state_is_safetensors_and_json_round_trip_bitwise(tmp_path):
    model, _, opt = _parts("bfloat16")
    path = ck.save_checkpoint(tmp_path, 1, model, opt, extra={"prompts": {"epoch": 0, "position": 3}, "t": (1, 2.5)})
    names = sorted(p.name for p in path.iterdir())
    assert "trainer_state.safetensors" in names and "trainer_state.json" in names and "manifest.json" in names
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    expected = torch.rand(4)
    model2, _, opt2 = _parts("bfloat16")
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    state = ck.load_checkpoint(tmp_path, model=model2, optimizer=opt2)
    assert torch.equal(torch.rand(4), expected)  # RNG restored
    assert state.extra == {"prompts": {"epoch": 0, "position": 3}, "t": (1, 2.5)}
    a, b = opt.state_dict(), opt2.state_dict()
    for m1, m2 in zip(a["masters"], b["masters"]):
        assert torch.equal(m1, m2)
    for pid, s in a["optimizer"]["state"].items():
        for key, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][key]), (pid, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_crafted_pickle_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    step = tmp_path / "ckpt" / "step-3"
    (step / "policy").mkdir(parents=True)
    with open(step / "trainer_state.pt", "wb") as f:
        pickle.dump({"step": 3, "x": _Payload(str(marker))}, f)
    with pytest.raises(ValueError, match=r"older checkpoint format.*pickle"):
        ck.load_checkpoint(step)
    with pytest.raises(ValueError, match=r"older checkpoint format"):
        ck.load_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()


def test_bit_flip_in_weights_is_refused_naming_the_file(tmp_path):
    model, _, opt = _parts()
    path = ck.save_checkpoint(tmp_path, 1, model, opt)
    weights = path / "policy" / "model.safetensors"
    good = weights.read_bytes()
    data = bytearray(good)
    data[-3] ^= 0x01  # same size, one bit
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors.*does not match its sha256"):
        ck.load_checkpoint(tmp_path, load_model=False, restore_rng=False)
    weights.write_bytes(good)
    (path / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=r"trainer_state\.json.*is missing"):
        ck.load_checkpoint(path, load_model=False, restore_rng=False)


def test_resume_finds_the_newest_complete_checkpoint_without_latest(tmp_path):
    from onpolicy.config import ExperimentConfig

    cfg = ExperimentConfig(logging={"output_dir": str(tmp_path / "run")}, trainer={"resume": True})
    root = ck.checkpoint_root(cfg)
    model, _, opt = _parts()
    for step in (1, 2):
        ck.save_checkpoint(root, step, model, opt, keep=5)
    (root / "latest").unlink()
    (root / "tmp-step-3").mkdir()  # killed mid-write
    (root / "step-4").mkdir()  # no manifest: not complete
    assert ck.resume_path(cfg) == root / "step-2"
    assert ck.load_checkpoint(root, load_model=False, restore_rng=False).step == 2


def test_keep_last_k_never_deletes_the_new_runs_checkpoints(tmp_path):
    model, _, opt = _parts()
    for old in (4, 6):  # left by an earlier run (a resume from an earlier step, or a directory reused by hand)
        ck.save_checkpoint(tmp_path, old, model, opt, keep=5)
    for step in (1, 2, 3):
        ck.save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 3, 4, 6]
