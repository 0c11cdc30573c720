"""Checkpoints: round trip (weights, optimizer, scheduler, RNG, extra), atomicity under a crash, keep-last-K."""
import pytest
import torch

from onpolicy.data import PromptIterator
from onpolicy.trainer import checkpoint as ck

tiny = pytest.importorskip("onpolicy.model.tiny")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, head_dim=64)


def _parts(seed=0):
    model, tok = tiny.build_tiny(seed=seed, **SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, tok, opt, sched


def _train_step(model, opt, sched):
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip(tmp_path):
    model, tok, opt, sched = _parts()
    _train_step(model, opt, sched)
    it = PromptIterator(list(range(5)), batch_size=2, seed=0)
    next(it)
    path = ck.save_checkpoint(tmp_path, 7, model, opt, sched, extra={"prompts": it.state_dict(), "cfg": {"a": 1}},
                              tokenizer=tok)
    assert path == tmp_path / "step-7" and (tmp_path / "latest").read_text().strip() == "step-7"
    assert (path / "policy" / "config.json").is_file() and (path / "policy" / "model.safetensors").is_file()
    expected_rand = torch.rand(3)  # what the RNG gives right after saving

    model2, _, opt2, sched2 = _parts(seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    state = ck.load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored
    assert state.step == 7 and state.extra["cfg"] == {"a": 1}
    assert state.model is model2
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][pid][key], s2["state"][pid][key])
    assert sched2.state_dict() == sched.state_dict()
    it2 = PromptIterator(list(range(5)), batch_size=2, seed=0)
    it2.load_state_dict(state.extra["prompts"])
    assert next(it2) == next(it)
    # a new model object from the policy dir when none is passed
    fresh = ck.load_checkpoint(tmp_path / "step-7", restore_rng=False)
    assert torch.equal(next(fresh.model.parameters()), next(model.parameters()))


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    model, _, opt, sched = _parts()
    ck.save_checkpoint(tmp_path, 1, model, opt, sched, extra={"n": 1})
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_tree", boom)  # crash after the policy files, before the state files
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 2, model, opt, sched, extra={"n": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1"]
    state = ck.load_checkpoint(tmp_path, load_model=True, restore_rng=False)
    assert state.step == 1 and state.extra == {"n": 1}
    assert not torch.equal(next(state.model.parameters()), next(model.parameters()))

    # a crash between renaming step-2 into place and updating `latest`: latest still names step-1
    monkeypatch.setattr(ck, "_write_latest", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path, 2, model, opt, sched, extra={"n": 2})
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path, load_model=False, restore_rng=False).step == 1

    # a killed process leaves tmp-step-*; the next save removes it
    (tmp_path / "tmp-step-9").mkdir()
    ck.save_checkpoint(tmp_path, 3, model, opt, sched, keep=5)
    assert not (tmp_path / "tmp-step-9").exists()
    assert ck.load_checkpoint(tmp_path, load_model=False, restore_rng=False).step == 3


def test_keep_last_k_and_resave(tmp_path):
    model, _, opt, sched = _parts()
    for step in range(1, 5):
        ck.save_checkpoint(tmp_path, step, model, opt, sched, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 4]
    ck.save_checkpoint(tmp_path, 4, model, opt, sched, extra={"again": True}, keep=2)  # same step again
    assert ck.load_checkpoint(tmp_path / "latest", load_model=False, restore_rng=False).extra == {"again": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-3", "step-4"]


def test_bad_arguments(tmp_path):
    model, _, opt, _ = _parts()
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        ck.save_checkpoint(tmp_path, -1, model, opt)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        ck.save_checkpoint(tmp_path, 1, model, opt, keep=0)
    with pytest.raises(ValueError, match="extra must be a dict"):
        ck.save_checkpoint(tmp_path, 1, model, opt, extra=[1])
    with pytest.raises(ValueError, match="neither a checkpoint step directory"):
        ck.load_checkpoint(tmp_path / "nothing")
    ck.save_checkpoint(tmp_path, 1, model, None)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        ck.load_checkpoint(tmp_path, optimizer=opt, load_model=False, restore_rng=False)


def test_resume_path(tmp_path):
    from onpolicy.config import ExperimentConfig

    cfg = ExperimentConfig(logging={"output_dir": str(tmp_path / "run")})
    assert ck.resume_path(cfg) is None  # resume: false
    cfg.trainer.resume = True
    assert ck.checkpoint_root(cfg) == tmp_path / "run" / "checkpoints"
    assert ck.resume_path(cfg) is None  # auto-resume with nothing saved yet: start fresh
    model, _, opt, _ = _parts()
    ck.save_checkpoint(ck.checkpoint_root(cfg), 1, model, opt)
    ck.save_checkpoint(ck.checkpoint_root(cfg), 2, model, opt)
    assert ck.resume_path(cfg) == ck.checkpoint_root(cfg) / "step-2"
    cfg.trainer.resume = str(ck.checkpoint_root(cfg) / "step-1")
    assert ck.resume_path(cfg) == ck.checkpoint_root(cfg) / "step-1"
    cfg.trainer.resume = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="trainer.resume: load_checkpoint: .*nowhere"):
        ck.resume_path(cfg)
