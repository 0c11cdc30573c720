"""GPU (H100): Qwen3-30B-A3B's layer shape (hidden 2048, 128 experts, top-8, expert width 768; 2 layers, vocab
128, bf16, random weights; also with raw top-k weights and a dense first layer) on the Triton kernels: engine
logprobs under a mixed workload (ragged prompts past position 1,000, chunked prefill beside decode, n=2
samples, CUDA graphs) are torch.equal to the trainer's and the routing mismatch is 0.0; the grouped expert GEMM
gives a token the same bits alone and inside batches of 1-4,096 tokens; 3-step GRPO runs (the tiny Qwen3-MoE,
and 2 layers of the real shape) log KL and routing mismatch 0.0."""
import json
from pathlib import Path

import pytest
import torch

from arch_cases import mixed_workload_pairs, random_model, real_shape_hf_config
from onpolicy.kernels.moe_gemm import grouped_linear, grouped_linear_reference, moe_block_m
from onpolicy.kernels.moe_routing import moe_layout
from onpolicy.model import CausalLM, ModelConfig
from onpolicy.model.routing import routing_parity
from onpolicy.model.tiny import CharTokenizer

pytestmark = pytest.mark.gpu


@torch.no_grad()
def _real_shape_model(name: str, layers=2, seed=3):
    cfg = ModelConfig.from_hf(real_shape_hf_config(name, layers=layers).to_dict(), dtype="bfloat16")
    model = CausalLM(cfg, init=False).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=g)
    return model.eval()


@pytest.mark.parametrize("name", ["qwen3-moe", "qwen3-moe-mixed"])
def test_moe_engine_equals_trainer_real_shape(name):
    model = _real_shape_model(name)
    pairs, (ps, cs) = mixed_workload_pairs(model)
    for i, (a, b) in enumerate(pairs):
        assert torch.equal(a, b), (name, i, float((a - b).abs().max()))
    assert routing_parity(model, ps, cs) == {"onpolicy/routing_mismatch": 0.0}


@pytest.mark.parametrize("which", ["gate_up", "down"])
def test_grouped_gemm_token_alone_equals_in_batch_real_shape(which):
    e, k, h, i = 128, 8, 2048, 768
    n, kk = (2 * i, h) if which == "gate_up" else (h, i)
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(e, n, kk, device="cuda", generator=g) / kk**0.5).bfloat16()
    x = torch.randn(4096, kk, device="cuda", generator=g).bfloat16()
    ids = torch.rand(4096, e, device="cuda", generator=g).argsort(-1)[:, :k]
    ids[:2048:2] = ids[1]  # many tokens on the same experts: their blocks fill up
    bm = moe_block_m(torch.bfloat16)
    full = moe_layout(ids, e, bm)
    y_all = grouped_linear(x, w, full, gather=True)[full.pair_row]
    torch.testing.assert_close(y_all[:64].float(), grouped_linear_reference(x[:64], w, ids[:64]).float(),
                               atol=2e-2, rtol=2e-2)
    for size in (1, 3, 17, 256, 1000):
        for t in (0, 1, size - 1):
            start = max(0, t - size + 1)
            part = moe_layout(ids[start : start + size], e, bm)
            y = grouped_linear(x[start : start + size], w, part, gather=True)[part.pair_row]
            assert torch.equal(y[t - start], y_all[t]), (which, size, t)


def test_moe_grpo_three_steps_on_cuda(tmp_path):
    from onpolicy.config import parse_args
    from onpolicy.trainer import train
    from test_architectures_grpo import CONFIG  # noqa: F401  (registers the test_digit_count reward)

    path = tmp_path / "model"
    random_model("qwen3-moe", seed=5).save_pretrained(path)
    CharTokenizer().save_pretrained(path)
    overrides = {"model.path": str(path), "model.dtype": "bfloat16", "model.device": "cuda", "trainer.steps": "3",
                 "trainer.prompts_per_step": "4", "sampling.num_generations": "4", "trainer.sft_warmup_steps": "0",
                 "trainer.strict_onpolicy": "true", "logging.output_dir": str(tmp_path / "out"),
                 "logging.plot": "false", "model.tiny": "{}", "rewards": "[{name: test_digit_count, weight: 1.0}]"}
    argv = ["--config", str(CONFIG)] + [x for kv in overrides.items() for x in (f"--{kv[0]}", kv[1])]
    train(parse_args(argv), log=lambda *a: None)
    rows = [json.loads(line) for line in Path(tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("onpolicy/kl", "onpolicy/mismatch_frac", "onpolicy/routing_mismatch"):
            assert r[key] == 0.0, (r["step"], key, r[key])


def test_moe_grpo_three_steps_real_layer_shape(tmp_path):
    """3 GRPO steps of a 2-layer model of the 30B-A3B layer shape (model.path tiny with MoE overrides, bf16):
    KL, logprob mismatch and routing mismatch 0.0 every step, and the policy moves."""
    from onpolicy.config import parse_args
    from onpolicy.trainer import train
    from test_architectures_grpo import CONFIG  # noqa: F401  (registers the test_digit_count reward)

    shape = ("{architecture: qwen3_moe, hidden_size: 2048, intermediate_size: 6144, num_hidden_layers: 2, "
             "num_attention_heads: 32, num_key_value_heads: 4, head_dim: 128, tie_word_embeddings: false, "
             "num_experts: 128, num_experts_per_tok: 8, moe_intermediate_size: 768, norm_topk_prob: true, "
             "max_position_embeddings: 1024}")
    overrides = {"model.path": "tiny", "model.tiny": shape, "model.dtype": "bfloat16", "model.device": "cuda",
                 "trainer.steps": "3", "trainer.prompts_per_step": "8", "sampling.num_generations": "4",
                 "trainer.sft_warmup_steps": "0", "trainer.strict_onpolicy": "true",
                 "logging.output_dir": str(tmp_path / "out"), "logging.plot": "false",
                 "rewards": "[{name: test_digit_count, weight: 1.0}]"}
    argv = ["--config", str(CONFIG)] + [x for kv in overrides.items() for x in (f"--{kv[0]}", kv[1])]
    train(parse_args(argv), log=lambda *a: None)
    rows = [json.loads(line) for line in Path(tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and any(r["grad_norm"] > 0 for r in rows)
    for r in rows:
        for key in ("onpolicy/kl", "onpolicy/mismatch_frac", "onpolicy/routing_mismatch"):
            assert r[key] == 0.0, (r["step"], key, r[key])
