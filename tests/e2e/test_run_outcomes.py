"""What a run leaves behind and how it ends: the final policy is always saved (transformers-loadable),
non-finite values stop the run with the last good policy saved, a collapsed run warns, resume survives a
truncated metrics line and refuses a checkpoint of a different run, keep-last-N checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _train(cfg, lines=None, parts=None):
    from onpolicy.trainer import train

    return train(cfg, log=(lines.append if lines is not None else lambda *a: None), parts=parts)


def _rows(cfg):
    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _steps_saved(cfg):
    from onpolicy.trainer.checkpoint import checkpoint_root, list_checkpoints

    return [s for s, _ in list_checkpoints(checkpoint_root(cfg))]


def _weights(policy_dir):
    from onpolicy.model import load_pretrained

    return load_pretrained(str(policy_dir))[0].state_dict()


def _warm_start(cfg):
    """The weights a run of `cfg` starts RL from (its model after the SFT warm start, from the shared cache)."""
    from onpolicy import determinism
    from onpolicy.data import load_prompts
    from onpolicy.build import build_model, build_tokenizer
    from onpolicy.trainer.setup import run_sft

    determinism.enable(seed=cfg.trainer.seed)
    tok = build_tokenizer(cfg)
    model = build_model(cfg, torch.device("cpu"), cfg.trainer.seed)
    encode = lambda text: list(tok.encode(text, add_special_tokens=False))  # noqa: E731
    run_sft(cfg, model, tok, load_prompts(cfg.data, tok), encode, lambda *a: None)
    return model.state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_final_policy_is_saved_and_transformers_loads_it(tiny_cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy.model import CharTokenizer, load_pretrained, sequence_logprobs

    cfg = tiny_cfg(**{"trainer.steps": 2, "trainer.save_every": 0})
    lines = []
    s = _train(cfg, lines)
    policy = Path(cfg.logging.output_dir) / "checkpoints" / "step-2" / "policy"
    assert s["final_policy"] == str(policy) and f"final policy (transformers-loadable) in {policy}" in lines[-1]
    assert _steps_saved(cfg) == [2]
    hf = AutoModelForCausalLM.from_pretrained(policy, attn_implementation="eager").float().eval()
    tok = AutoTokenizer.from_pretrained(policy)
    prompt, completion = tok.encode("123="), tok.encode("321")
    assert prompt == CharTokenizer().encode("123=")
    ours = sequence_logprobs(load_pretrained(str(policy))[0], [prompt], [completion], temperature=1.0)[0]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float()
    theirs = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
    torch.testing.assert_close(ours.detach(), theirs, atol=2e-4, rtol=1e-4)


def test_last_steps_are_saved_and_keep_last_n(tiny_cfg):
    cfg = tiny_cfg("uneven", **{"trainer.steps": 3, "trainer.save_every": 2})
    _train(cfg)
    assert _steps_saved(cfg) == [2, 3]  # step 3 is not a multiple of save_every, and is not lost
    cfg = tiny_cfg("keep", **{"trainer.steps": 4, "trainer.save_every": 1, "trainer.keep_checkpoints": 3})
    _train(cfg)
    assert _steps_saved(cfg) == [2, 3, 4]


def _nan_at(step_index, monkeypatch, target):
    """Make `target` ('trainer logprobs' | 'loss' | 'gradient norm') NaN at the 0-based RL step `step_index`;
    -> the trainer parts to run with (the loss: a loss function that returns NaN)."""
    from onpolicy.trainer import TrainerParts
    from onpolicy.trainer.losses import slice_loss
    from onpolicy.trainer.update import trainer_logprobs

    calls = {"n": 0}
    if target == "trainer logprobs":
        def nan_logprobs(model, ro, temperature, grad):
            out = trainer_logprobs(model, ro, temperature, grad)
            if grad:
                calls["n"] += 1
                if calls["n"] == step_index + 1:
                    out = [lp * float("nan") for lp in out]
            return out

        return TrainerParts(logprobs_fn=nan_logprobs)
    elif target == "loss":
        def nan_loss(*a, **k):  # one call per micro-batch: the default has one
            out = slice_loss(*a, **k)
            calls["n"] += 1
            if calls["n"] == step_index + 1:
                out.loss = out.loss * float("nan")
            return out

        return TrainerParts(loss_fn=nan_loss)
    else:
        real = torch.nn.utils.clip_grad_norm_

        def patched(params, max_norm):
            calls["n"] += 1
            norm = real(params, max_norm)
            return norm * float("nan") if calls["n"] == step_index + 1 else norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", patched)


def test_nan_logprobs_stop_the_run_not_a_parity_violation(tiny_cfg, monkeypatch):
    from onpolicy.trainer.health import NonFiniteError

    good = tiny_cfg("good", **{"trainer.steps": 1})
    _train(good)
    cfg = tiny_cfg("nan", **{"trainer.steps": 3, "trainer.strict_onpolicy": True})
    parts = _nan_at(1, monkeypatch, "trainer logprobs")
    lines = []
    with pytest.raises(NonFiniteError, match=r"step 2: trainer logprobs non-finite .*update was not applied.*"
                                             r"last good policy \(before step 2\) is saved in .*step-1/policy") as e:
        _train(cfg, lines, parts=parts)
    assert "doctor" not in str(e.value) and "strict_onpolicy" not in str(e.value)
    assert _steps_saved(cfg) == [1]
    _assert_same_weights(_weights(Path(e.value.saved)), _weights(Path(good.logging.output_dir) /
                                                                  "checkpoints/step-1/policy"))
    rows = _rows(cfg)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["onpolicy/kl"] == 0.0
    assert rows[1]["onpolicy/kl"] != rows[1]["onpolicy/kl"]  # NaN logged for the bad step
    assert "stopped: trainer logprobs non-finite at step 2" in lines[-1]
    assert "max |onpolicy/kl| nan" in lines[-1] and "non-finite values at steps [2]" in lines[-1]


@pytest.mark.parametrize("target", ["loss", "gradient norm"])
def test_nan_loss_or_gradient_stops_before_the_update(tiny_cfg, monkeypatch, target):
    from onpolicy.trainer.health import NonFiniteError

    cfg = tiny_cfg("nan", **{"trainer.steps": 2, "trainer.invariant": False, "trainer.strict_onpolicy": False})
    parts = _nan_at(0, monkeypatch, target)
    with pytest.raises(NonFiniteError, match=rf"step 1: {target} non-finite") as e:
        _train(cfg, parts=parts)
    assert _steps_saved(cfg) == [0]
    _assert_same_weights(_weights(Path(e.value.saved)), _warm_start(cfg))  # the policy before any RL step


def test_nan_exits_nonzero_from_the_recipe(e2e_root):
    out = e2e_root / "recipe-nan"  # a sibling of the session's SFT cache
    args = ["--config", "configs/tiny-cpu.yaml", "--trainer.steps", "2", "--trainer.prompts_per_step", "4",
            "--sampling.num_generations", "4", "--logging.plot", "false", "--logging.output_dir", str(out),
            "--trainer.sft_cache_dir", str(e2e_root / "cache")]
    code = ("from onpolicy.cli import train_command; from onpolicy.trainer import TrainerParts\n"
            "from onpolicy.trainer.update import trainer_logprobs\n"
            "def nan(m, ro, t, grad):\n    return [x * float('nan') for x in trainer_logprobs(m, ro, t, grad)]\n"
            f"train_command({args!r}, parts=TrainerParts(logprobs_fn=nan))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "step 1: trainer logprobs non-finite" in errors[0] and "doctor" not in p.stderr


def test_collapse_warns(tiny_cfg):
    cfg = tiny_cfg(**{"trainer.steps": 5, "trainer.lr": 1e3})
    lines = []
    s = _train(cfg, lines)
    warnings = [line for line in lines if line.startswith("warning: no learning signal")]
    assert len(warnings) == 1 and "for 3 steps (2-4)" in warnings[0] and "trainer.lr 1000" in warnings[0]
    assert s["no_signal_since"] == 2 and "no learning signal since step 2" in lines[-1]


def test_resume_survives_a_truncated_metrics_line(tiny_cfg):
    first = tiny_cfg("r", **{"trainer.steps": 2})
    _train(first)
    with open(Path(first.logging.output_dir) / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "onpolicy/k')  # killed mid-write
    again = tiny_cfg("r", **{"trainer.steps": 3, "trainer.resume": True})
    s = _train(again)
    assert s["start_step"] == 2 and [r["step"] for r in _rows(again)] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_a_different_run(tiny_cfg, monkeypatch):
    from onpolicy.model import tiny

    first = tiny_cfg("c", **{"trainer.steps": 1})
    _train(first)

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the resume check")

    monkeypatch.setattr(tiny, "build_tiny", no_compute)
    changed = tiny_cfg("c", **{"trainer.steps": 2, "trainer.resume": True, "trainer.lr": 1e-3,
                               "sampling.num_generations": 2})
    with pytest.raises(ValueError, match=r"trainer\.resume: .*step-1 was written by a run with a different config "
                                         r"\(sampling\.num_generations: 4 -> 2; trainer\.lr: 0\.0005 -> 0\.001\)"):
        _train(changed)


def test_save_only_model_writes_no_optimizer_state_and_refuses_resume(tiny_cfg, monkeypatch):
    from onpolicy.model import tiny

    first = tiny_cfg("m", **{"trainer.steps": 1, "trainer.save_only_model": True})
    _train(first)
    step_dir = Path(first.logging.output_dir) / "checkpoints/step-1"
    from onpolicy.trainer.safe_state import load_tree

    assert load_tree(step_dir / "trainer_state")["optimizer"] is None
    assert json.loads((step_dir / "meta.json").read_text())["model_only"] is True
    _weights(step_dir / "policy")  # the policy itself is complete

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the resume check")

    monkeypatch.setattr(tiny, "build_tiny", no_compute)
    again = tiny_cfg("m", **{"trainer.steps": 2, "trainer.save_only_model": True, "trainer.resume": True})
    with pytest.raises(ValueError, match=r"trainer\.resume: .*step-1 was saved with trainer\.save_only_model"):
        _train(again)
