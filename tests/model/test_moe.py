"""Qwen3-MoE beyond the per-family rows of test_architectures.py: the routing parity metric (0.0 between the
engine's and the trainer's mode, and able to fail), transformers 5's fused 3-D expert checkpoints, dense layers
where the config says, and configs the MoE layer cannot compute refused at load."""
import json

import pytest
import torch

from arch_cases import random_model
from onpolicy.model import ModelConfig, load_pretrained
from onpolicy.model.moe import MoEMLP
from onpolicy.model.routing import (engine_mode_routing, routing_mismatch, routing_parity,
                                    training_mode_routing)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3-moe")
    random_model("qwen3-moe", seed=3).save_pretrained(path)
    return path


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (1, 9, 40, 3)]
    completions = [torch.randint(4, 100, (n,), generator=g).tolist() for n in (5, 1, 17, 0)]
    return prompts, completions


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_routing_mismatch_is_zero_between_engine_and_training_mode(moe_dir, dtype):
    model, _ = load_pretrained(str(moe_dir), dtype=dtype)
    prompts, completions = _batch()
    assert routing_parity(model, prompts, completions) == {"onpolicy/routing_mismatch": 0.0}
    routes = engine_mode_routing(model, prompts, completions)
    assert [r.shape for r in routes] == [(len(p) + len(c) - 1, 2, 8) for p, c in zip(prompts, completions)]


def test_routing_mismatch_fails_when_routes_differ(moe_dir):
    model, _ = load_pretrained(str(moe_dir))
    prompts, completions = _batch(1)
    before = engine_mode_routing(model, prompts, completions)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight.mul_(-1.0)  # the other experts win
    after = training_mode_routing(model, prompts, completions)
    assert routing_mismatch(before, after) > 0.5
    one = [r.clone() for r in before]
    chosen = set(one[2][4, 1].tolist())
    one[2][4, 1, 0] = min(set(range(16)) - chosen)  # one token, one layer, one expert swapped for an unchosen one
    assert routing_mismatch(before, one) == 1 / sum(r.shape[0] for r in before)
    swapped = [r.flip(-1) for r in before]  # the same sets in another rank order: no mismatch
    assert routing_mismatch(before, swapped) == 0.0


def test_fused_3d_expert_checkpoint_loads_the_same_weights(moe_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(moe_dir / "model.safetensors"))
    fused = {k: v for k, v in tensors.items() if ".mlp.experts." not in k}
    for layer in (0, 1):
        pre = f"model.layers.{layer}.mlp.experts"
        e = 16
        gate_up = [torch.cat([tensors[f"{pre}.{i}.gate_proj.weight"], tensors[f"{pre}.{i}.up_proj.weight"]])
                   for i in range(e)]
        fused[f"{pre}.gate_up_proj"] = torch.stack(gate_up)
        fused[f"{pre}.down_proj"] = torch.stack([tensors[f"{pre}.{i}.down_proj.weight"] for i in range(e)])
    save_file(fused, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((moe_dir / "config.json").read_text())
    a, _ = load_pretrained(str(moe_dir))
    b, _ = load_pretrained(str(tmp_path))
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), n


def test_dense_layers_where_the_config_says():
    hf = ModelConfig(architecture="qwen3_moe", num_hidden_layers=4, head_dim=64, num_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=2,
                     mlp_only_layers=(3,)).to_hf()
    hf = json.loads(json.dumps(hf))  # as read back from config.json
    c = ModelConfig.from_hf(hf)
    assert [c.layer_is_moe(i) for i in range(4)] == [False, True, False, False]
    from onpolicy.model import CausalLM

    kinds = [type(layer.mlp).__name__ for layer in CausalLM(c).model.layers]
    assert kinds == ["MLP", "MoEMLP", "MLP", "MLP"]


@pytest.mark.parametrize("change,match", [
    ({"num_experts_per_tok": 20}, "num_experts_per_tok"),
    ({"num_experts": 0}, "num_experts"),
    ({"mlp_only_layers": [7]}, "mlp_only_layers"),
    ({"use_sliding_window": True}, "use_sliding_window"),
])
def test_configs_the_moe_layer_cannot_compute_are_refused(change, match):
    hf = dict(model_type="qwen3_moe", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=64, num_experts=16, num_experts_per_tok=8,
              moe_intermediate_size=32, norm_topk_prob=True)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(dict(hf, **change))


def test_dense_family_refuses_experts():
    with pytest.raises(ValueError, match="ModelConfig.num_experts"):
        ModelConfig(architecture="qwen3", num_experts=4)
    assert MoEMLP is not None


def test_freeze_router_keeps_the_gates_out_of_training(moe_dir):
    from onpolicy.model.moe import freeze_router, moe_layers
    from onpolicy.model.tiny import build_tiny

    model, _ = load_pretrained(str(moe_dir))
    freeze_router(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"model.layers.{i}.mlp.gate.weight" for i in range(2)} and len(moe_layers(model)) == 2
    with pytest.raises(ValueError, match="model.freeze_router"):
        freeze_router(build_tiny(seed=0)[0])


def test_router_aux_loss_is_transformers_load_balancing_loss(moe_dir):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from onpolicy.model.moe import router_aux_loss
    from model_test_utils import packed

    model, c = load_pretrained(str(moe_dir))
    prompts, completions = _batch(2)
    with router_aux_loss(model) as aux:
        model(*packed([p + q for p, q in zip(prompts, completions)]))
    loss = aux.loss()
    ref = load_balancing_loss_func(tuple(logits for logits, _ in aux.entries), c.num_experts, c.num_experts_per_tok)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    loss.backward()
    assert all(layer.mlp.gate.weight.grad.abs().sum() > 0 for layer in model.model.layers)


def test_grpo_with_frozen_router_and_aux_loss(tmp_path):
    """3 GRPO steps with `model.freeze_router` and `model.router_aux_loss_coef`: KL and routing mismatch 0.0,
    the routers unchanged, the experts trained."""
    from onpolicy.config import parse_args
    from onpolicy.model.tiny import CharTokenizer
    from onpolicy.trainer import train
    from test_architectures_grpo import CONFIG  # noqa: F401  (registers the test_digit_count reward)

    path = tmp_path / "model"
    random_model("qwen3-moe", seed=5).save_pretrained(path)
    CharTokenizer().save_pretrained(path)
    overrides = {"model.path": str(path), "model.dtype": "float32", "trainer.steps": "3",
                 "trainer.prompts_per_step": "2", "sampling.num_generations": "4", "trainer.sft_warmup_steps": "0",
                 "trainer.strict_onpolicy": "true", "logging.output_dir": str(tmp_path / "out"),
                 "logging.plot": "false", "model.tiny": "{}", "rewards": "[{name: test_digit_count, weight: 1.0}]",
                 "model.freeze_router": "true", "model.router_aux_loss_coef": "0.01", "trainer.lr": "1e-3"}
    argv = ["--config", str(CONFIG)] + [x for kv in overrides.items() for x in (f"--{kv[0]}", kv[1])]
    summary = train(parse_args(argv), log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["onpolicy/kl"] == 0.0 and r["onpolicy/routing_mismatch"] == 0.0 for r in rows)
    before, _ = load_pretrained(str(path))
    after, _ = load_pretrained(summary["final_policy"])
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
        if name.endswith("mlp.gate.weight"):
            assert torch.equal(a, b), name
        elif ".experts." in name:
            assert not torch.equal(a, b), name


def test_dense_model_refuses_moe_settings():
    from onpolicy.config import parse_args
    from onpolicy.build import build_model

    for key in ("model.freeze_router", "model.router_aux_loss_coef"):
        cfg = parse_args([f"--{key}", "true" if "freeze" in key else "0.1"])
        with pytest.raises(ValueError, match=key):
            build_model(cfg, torch.device("cpu"), seed=0)


def test_activation_checkpointing_gives_identical_gradients(moe_dir):
    from onpolicy.model import sequence_logprobs

    model, _ = load_pretrained(str(moe_dir))
    prompts, completions = _batch(3)
    out = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad(set_to_none=True)
        lps = torch.cat(sequence_logprobs(model, prompts, completions))
        (lps * torch.linspace(-1, 1, lps.numel())).sum().backward()
        out.append((lps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(out[0][1][n], out[1][1][n]) for n in out[0][1])


def test_routing_parity_in_groups_equals_one_group(moe_dir, monkeypatch):
    from onpolicy.model import routing

    model, _ = load_pretrained(str(moe_dir))
    prompts, completions = _batch(4)
    assert list(routing._groups(prompts, completions, 20)) == [range(0, 2), range(2, 3), range(3, 4)]  # 6+10, 57, 3
    assert list(routing._groups(prompts, completions, 1000)) == [range(0, 4)]
    monkeypatch.setattr(routing, "CHUNK_TOKENS", 20)
    assert routing_parity(model, prompts, completions) == {"onpolicy/routing_mismatch": 0.0}
    assert routing_parity(model, [], []) == {}
