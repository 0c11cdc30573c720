"""Sampler == trainer with LoRA adapters (torch.equal): the engine's logprobs of every sampled token equal the
trainer's packed `sequence_logprobs`, under concurrent ragged requests, chunked prefill, prefix-cache hits and
preemption; partial qkv targets (q, v) and all linear layers; bf16 and fp32. Plus a CUDA bf16 case (gpu)."""
import pytest
import torch

from lora_test_utils import lora_tiny
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import sequence_logprobs

PARTIAL = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def _prompts(n, lo, hi, seed=0, vocab=80):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(4, vocab, (k,), generator=g).tolist() for k in lens]


def assert_parity(model, outputs, temperature=1.0) -> int:
    prompts, completions, engine_lps = [], [], []
    for out in outputs:
        for c in out.outputs:
            prompts.append(out.prompt_token_ids)
            completions.append(c.token_ids)
            engine_lps.append(c.logprobs)
    with torch.no_grad():
        trainer_lps = sequence_logprobs(model, prompts, completions, temperature)
    for i, (a, b) in enumerate(zip(engine_lps, trainer_lps)):
        assert torch.equal(a, b.to(a.device)), f"completion {i}: max |diff| {float((a - b.to(a.device)).abs().max())}"
    return len(completions)


@pytest.fixture(scope="module", params=[("bfloat16", PARTIAL), ("bfloat16", None), ("float32", None)],
                ids=["bf16-partial", "bf16-all", "fp32-all"])
def model_tok(request):
    dtype, targets = request.param
    model, tok, _ = lora_tiny(dtype, targets=targets)
    return model, tok


def test_parity_concurrent_ragged_chunked(model_tok):
    model, tok = model_tok
    llm = LLM(model, tok, EngineConfig(num_blocks=256, max_num_batched_tokens=24, block_size=4))
    params = [SamplingParams(temperature=1.0, max_tokens=2 + i % 7, seed=100 + i) for i in range(11)]
    outs = llm.generate(_prompts(11, 1, 40, seed=1), params)
    assert assert_parity(model, outs) == 11
    assert len({len(o.outputs[0].token_ids) for o in outs}) > 1


def test_parity_prefix_hits_and_preemption(model_tok):
    model, tok = model_tok
    shared = _prompts(1, 33, 33, seed=7)[0]
    llm = LLM(model, tok, EngineConfig(num_blocks=256, block_size=8, max_num_batched_tokens=64))
    outs = llm.generate([shared, shared[:20] + [5, 6, 7], shared + [9]],
                        SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=11))
    assert llm.block_manager.num_hits >= 32
    assert assert_parity(model, outs) == 9
    small = LLM(model, tok, EngineConfig(num_blocks=12, block_size=4, max_num_batched_tokens=64))
    outs = small.generate(_prompts(6, 6, 14, seed=9),
                          [SamplingParams(n=1 + i % 2, temperature=0.7, max_tokens=8 + i % 5, seed=i) for i in range(6)])
    assert small.scheduler.num_preemptions > 0
    assert assert_parity(model, outs, 0.7) == 9


def test_adapters_change_the_rollouts():
    """The parity above is not vacuous: with adapters zeroed the same seeds give other logprobs."""
    model, tok, _ = lora_tiny("bfloat16")
    prompts = _prompts(4, 5, 12, seed=3)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=5)
    with_lora = LLM(model, tok, EngineConfig(num_blocks=64)).generate(prompts, params)
    for layer in model.model.layers:
        for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            lin.lora = None
    without = LLM(model, tok, EngineConfig(num_blocks=64)).generate(prompts, params)
    assert any(not torch.equal(a.outputs[0].logprobs[:1], b.outputs[0].logprobs[:1]) for a, b in zip(with_lora, without))


@pytest.mark.gpu
def test_parity_cuda_bf16_lora():
    """CUDA bf16 (Triton kernels, CUDA graphs as configured by default): engine == trainer with adapters on every
    linear layer and on q/v only, ragged concurrent requests and prefix hits."""
    for targets in (None, PARTIAL):
        model, tok, _ = lora_tiny("bfloat16", targets=targets, hidden_size=256, intermediate_size=512,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=64)
        model = model.cuda()
        llm = LLM(model, tok, EngineConfig(num_blocks=512, block_size=16, max_num_batched_tokens=256))
        shared = _prompts(1, 40, 40, seed=2)[0]
        prompts = _prompts(13, 1, 60, seed=4) + [shared, shared + [7, 8], shared[:33]]
        params = [SamplingParams(temperature=1.0, max_tokens=4 + i % 13, seed=i) for i in range(len(prompts))]
        outs = llm.generate(prompts, params)
        assert assert_parity(model, outs) == len(prompts)
