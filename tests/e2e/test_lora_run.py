"""LoRA runs of the embedded default end to end on CPU: KL exactly 0.0 every step (strict), the base weights
bitwise unchanged and the adapters changed, micro/mini-batches with activation checkpointing, a bf16 model
(base frozen in bf16, fp32 adapter masters), resume bitwise, and a run that starts from a saved adapter."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onpolicy.lora.training import ADAPTER_DIR
from onpolicy.model.layers import is_adapter

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
PARITY = ("onpolicy/kl", "onpolicy/logprob_diff/max", "onpolicy/mismatch_frac")
TIMING = ("time/sample", "time/train", "time/step", "throughput/tokens_per_s")
LORA = {"lora.r": 4, "lora.alpha": 8.0, "trainer.lr": 2e-3, "trainer.strict_onpolicy": True}


def _rows(cfg):
    with open(f"{cfg.logging.output_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _train_capturing(cfg):
    """train(cfg); returns (summary, the Trainer, weights before the first RL step: {name: clone})."""
    from onpolicy.trainer import train
    from onpolicy.trainer.setup import build_trainer

    seen = {}

    def spy(*a, **kw):
        trainer = build_trainer(*a, **kw)
        seen["run"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return trainer

    summary = train(cfg, log=lambda *a: None, builder=spy)
    return summary, seen["run"], seen["before"]


@pytest.mark.parametrize("dtype,extra", [
    ("float32", {"lora.save_merged": True}),
    ("bfloat16", {"trainer.micro_batch_tokens": 40, "trainer.mini_batches": 2,
                  "trainer.activation_checkpointing": True, "lora.target_modules": ["q_proj", "v_proj", "down_proj"]}),
], ids=["fp32", "bf16-micro-mini-ckpt-partial"])
def test_lora_run_on_policy_base_frozen(tiny_cfg, dtype, extra):
    cfg = tiny_cfg(**{**LORA, "model.dtype": dtype, **extra})
    summary, run, before = _train_capturing(cfg)
    rows = _rows(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in PARITY:
            assert r[key] == 0.0, (r["step"], key, r[key])
    assert any(r["grad_norm"] > 0 for r in rows)
    after = dict(run.model.named_parameters())
    adapters = [n for n in after if is_adapter(n)]
    assert adapters and all(after[n].dtype == getattr(torch, dtype) for n in after)
    for name, p in after.items():
        if not is_adapter(name):
            assert torch.equal(p, before[name]) and not p.requires_grad, name
    assert any(not torch.equal(after[n], before[n]) for n in adapters), "the adapters did not train"
    # the optimizer holds fp32 masters and AdamW state for the adapters only
    opt = run.optimizer
    assert len(opt.params) == len(adapters) and all(m.dtype == torch.float32 for m in opt.masters)
    assert summary["final_policy"].endswith(ADAPTER_DIR)
    if extra.get("lora.save_merged"):  # the merged export: a plain HF model with the adapted model's logits
        from onpolicy.model import AttentionMetadata, load_pretrained

        merged, _ = load_pretrained(f"{cfg.logging.output_dir}/merged")
        ids = torch.tensor([5, 9, 12, 7, 30, 2], dtype=torch.int64)
        pos, meta = torch.arange(6), AttentionMetadata.for_training(torch.tensor([0, 6], dtype=torch.int32))
        with torch.no_grad():
            want = run.model.logits(run.model(ids, pos, meta))
            torch.testing.assert_close(merged.logits(merged(ids, pos, meta)), want, atol=1e-4, rtol=1e-4)


def _adapter(cfg, step):
    from onpolicy.trainer import checkpoint

    return load_file(str(checkpoint.checkpoint_root(cfg) / f"step-{step}" / ADAPTER_DIR / "adapter_model.safetensors"))


def test_lora_resume_is_bitwise_identical(tiny_cfg):
    from onpolicy.trainer import train

    common = {**LORA, "model.dtype": "bfloat16", "trainer.steps": 4, "trainer.save_every": 2}
    straight = tiny_cfg("straight", **common)
    train(straight, log=lambda *a: None)
    train(tiny_cfg("resumed", **{**common, "trainer.steps": 2}), log=lambda *a: None)
    second = tiny_cfg("resumed", **{**common, "trainer.resume": True})
    assert train(second, log=lambda *a: None)["start_step"] == 2
    a, b = _adapter(straight, 4), _adapter(second, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mid = _adapter(straight, 2)
    assert any(not torch.equal(mid[k], a[k]) for k in a), "steps 3-4 did not change the adapters"
    for x, y in zip(_rows(straight), _rows(second)):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}

    # a fresh run can start from that adapter (lora.init_from): its adapters begin with the saved values
    from onpolicy.trainer import checkpoint

    path = str(checkpoint.checkpoint_root(straight) / "step-4" / ADAPTER_DIR)
    cfg = tiny_cfg("init-from", **{**LORA, "model.dtype": "bfloat16", "trainer.steps": 1, "lora.init_from": path})
    _, run, before = _train_capturing(cfg)
    saved = _adapter(straight, 4)
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
    assert torch.equal(before["model.layers.0.mlp.down_proj.lora.lora_B"], saved[key])

    # recipes/eval.py's work on the LoRA policy: the base (model.path) plus the adapter (lora.init_from)
    from onpolicy.config import parse_args
    from onpolicy.eval_run import run_evaluation

    step = checkpoint.checkpoint_root(straight) / "step-4"
    texts = {}
    for name, extra in (("lora", ["--lora.r", "4", "--lora.alpha", "8", "--lora.init_from", path]), ("base", [])):
        out = straight.logging.output_dir + f"-eval-{name}"
        cfg = parse_args(["--config", str(DEFAULT_CONFIG), "--model.path", str(step / "policy"), "--model.tiny",
                          "{}", "--model.dtype", "bfloat16", "--eval.num_examples", "8", "--logging.output_dir", out,
                          *extra])
        records, summary, _ = run_evaluation(cfg, log=lambda *a: None)
        texts[name] = [r["completions"] for r in records]
        assert 0.0 <= summary["accuracy"] <= 1.0
    assert texts["lora"] != texts["base"]  # the adapter was attached and changes the greedy completions


def test_lora_refusals(tiny_cfg, tmp_path):
    from onpolicy.config import ConfigError
    from onpolicy.trainer import train

    with pytest.raises(ConfigError, match=r"^lora\.r: LoRA adapters run on the native engine only"):
        tiny_cfg(**{**LORA, "engine.backend": "vllm"})
    with pytest.raises(ValueError, match=r"^lora\.init_from: .* has no adapter_config\.json"):
        train(tiny_cfg(**{**LORA, "lora.init_from": str(tmp_path)}), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"^lora\.init_from: set, but lora\.r is 0"):
        train(tiny_cfg(**{"lora.init_from": str(tmp_path)}), log=lambda *a: None)


def test_lora_nan_loss_stops_before_the_update_and_keeps_the_last_good_adapters(tiny_cfg):
    from onpolicy.trainer import train
    from onpolicy.trainer.health import NonFiniteError
    from onpolicy.trainer.losses import slice_loss
    from onpolicy.trainer.trainer import TrainerParts

    good = tiny_cfg("good", **{**LORA, "trainer.steps": 1})
    train(good, log=lambda *a: None)
    calls = {"n": 0}

    def nan_in_step_2(*a, **k):  # one call per micro-batch: one micro-batch per step here
        out = slice_loss(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    cfg = tiny_cfg("nan", **{**LORA, "trainer.steps": 3})
    with pytest.raises(NonFiniteError, match=r"step 2: loss non-finite"):
        train(cfg, log=lambda *a: None, parts=TrainerParts(loss_fn=nan_in_step_2))
    kept, want = _adapter(cfg, 1), _adapter(good, 1)
    assert kept.keys() == want.keys() and all(torch.equal(kept[k], want[k]) for k in want)


@pytest.mark.gpu
def test_lora_run_on_cuda_bf16_is_on_policy(tiny_cfg):
    """On the H100: the default with adapters on CUDA in bf16 (Triton kernels, CUDA-graph decode, micro-batches
    with activation checkpointing): KL exactly 0.0 every step, base unchanged bitwise, adapters trained."""
    cfg = tiny_cfg(**{**LORA, "model.device": "cuda", "model.dtype": "bfloat16", "engine.use_cuda_graphs": True,
                      "trainer.micro_batch_tokens": 64, "trainer.activation_checkpointing": True})
    _, run, before = _train_capturing(cfg)
    rows = _rows(cfg)
    assert len(rows) == 3 and all(r[key] == 0.0 for r in rows for key in PARITY)
    after = dict(run.model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in after.items() if not is_adapter(n))
    assert any(not torch.equal(p, before[n]) for n, p in after.items() if is_adapter(n))
