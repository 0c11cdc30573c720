"""vLLM backend parity: logprobs torch.equal to the trainer's `sequence_logprobs`, tokens equal to the native
engine's, across ragged prompts, chunked prefill, prefix-cache hits, temperatures 0 / 0.7 / 1.0, n > 1 and
many concurrent requests; weights synced in place after a change."""
import random

import pytest
import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import build_tiny, sequence_logprobs

TINY = dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
            max_position_embeddings=128)
CHUNK = 48  # max_num_batched_tokens: any prompt longer than this is prefilled in chunks


@pytest.fixture(scope="module")
def setup():
    from onpolicy.engine.vllm_backend import VllmLLM

    model, tok = build_tiny(seed=1, **TINY)
    with kernels.invariant_mode(True):
        llm = VllmLLM(model, tok, EngineConfig(max_num_batched_tokens=CHUNK, max_num_seqs=32), seed=0)
    return model, tok, llm


def _prompts(n, lo, hi, seed):
    rng = random.Random(seed)
    return [[rng.randrange(3, 60) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _check_trainer_parity(model, prompts, outs, temperature):
    t_eff = temperature if temperature > 0 else 1.0
    pairs = [(o.prompt_token_ids, c) for o in outs for c in o.outputs]
    ref = sequence_logprobs(model, [p for p, _ in pairs], [c.token_ids for _, c in pairs], t_eff)
    for (p, c), r in zip(pairs, ref):
        assert len(c.token_ids) > 0
        assert torch.equal(c.logprobs, r.float()), (p, c.token_ids)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_ragged_concurrent_n2_equal_trainer_and_native(setup, temperature):
    model, tok, llm = setup
    prompts = _prompts(40, 1, 30, seed=int(temperature * 10))
    params = SamplingParams(n=2, temperature=temperature, max_tokens=12, seed=123, ignore_eos=True)
    with kernels.invariant_mode(True), torch.no_grad():
        outs = llm.generate(prompts, params)
        native = LLM(model, tok, EngineConfig(block_size=16)).generate(prompts, params)
        _check_trainer_parity(model, prompts, outs, temperature)
    for o, n in zip(outs, native):
        assert [c.token_ids for c in o.outputs] == [c.token_ids for c in n.outputs]
        for c, d in zip(o.outputs, n.outputs):
            assert torch.equal(c.logprobs, d.logprobs)
            assert c.finish_reason == d.finish_reason == "length"
    if temperature > 0:  # the two samples of a request differ somewhere (sample index is in the hash)
        assert any(o.outputs[0].token_ids != o.outputs[1].token_ids for o in outs)


def test_chunked_prefill(setup):
    model, tok, llm = setup
    prompts = _prompts(6, CHUNK + 10, 100, seed=5)  # every prompt is longer than a step's token budget
    before = llm.stats["prefill_cached_tokens"]
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_tokens=8, seed=9, ignore_eos=True)
    with kernels.invariant_mode(True), torch.no_grad():
        outs = llm.generate(prompts, params)
        native = LLM(model, tok, EngineConfig()).generate(prompts, params)
        _check_trainer_parity(model, prompts, outs, 1.0)
    assert llm.stats["prefill_cached_tokens"] - before >= CHUNK  # later chunks attended to earlier ones
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in native]


def test_prefix_cache_hits(setup):
    model, tok, llm = setup
    shared = _prompts(1, 40, 40, seed=11)[0]  # > one 32-token vLLM block: a cacheable full block
    prompts = [shared + tail for tail in _prompts(8, 1, 6, seed=12)]
    params = SamplingParams(temperature=0.7, max_tokens=6, seed=3, ignore_eos=True)
    with kernels.invariant_mode(True), torch.no_grad():
        first = llm.generate(prompts[:1], params)
        before = llm.stats["prefill_cached_tokens"]
        outs = llm.generate(prompts, params)
        _check_trainer_parity(model, prompts, outs, 0.7)
    assert llm.stats["prefill_cached_tokens"] - before >= 32 * 8
    assert first[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_stop_rules_match_native(setup):
    model, tok, llm = setup
    prompts = _prompts(12, 2, 10, seed=21)
    params = [SamplingParams(temperature=1.0, max_tokens=10, seed=i, stop_token_ids=[5, 6, 7, 8, 9])
              for i in range(6)]
    params += [SamplingParams(temperature=1.0, max_tokens=10, seed=i, stop=["a", "1"]) for i in range(6)]
    with kernels.invariant_mode(True), torch.no_grad():
        outs = llm.generate(prompts, params)
        native = LLM(model, tok, EngineConfig()).generate(prompts, params)
    for o, n in zip(outs, native):
        c, d = o.outputs[0], n.outputs[0]
        assert (c.token_ids, c.text, c.finish_reason) == (d.token_ids, d.text, d.finish_reason)
        assert torch.equal(c.logprobs, d.logprobs)
    assert any(o.outputs[0].finish_reason == "stop" for o in outs)


def test_weights_sync_in_place(setup):
    model, tok, llm = setup
    prompts = _prompts(4, 3, 9, seed=31)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=1, ignore_eos=True)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        with kernels.invariant_mode(True), torch.no_grad():
            stale = llm.generate(prompts, params)
            llm.reset_prefix_cache()  # what the trainer calls after every optimizer step
            fresh = llm.generate(prompts, params)
            _check_trainer_parity(model, prompts, fresh, 1.0)
            ref = sequence_logprobs(model, prompts, [o.outputs[0].token_ids for o in stale])
        assert any(not torch.equal(o.outputs[0].logprobs, r) for o, r in zip(stale, ref))
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        llm.reset_prefix_cache()


def test_bad_requests_fail_before_compute(setup):
    model, tok, llm = setup
    steps = llm.stats["steps"]
    with pytest.raises(ValueError, match=r"prompts\[1\]: token ids must be in"):
        llm.generate([[3, 4], [10_000]], SamplingParams())
    with pytest.raises(ValueError, match="SamplingParams.temperature"):
        llm.generate([[3, 4]], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="exceeds the context limit"):
        llm.generate([[3] * 120], SamplingParams(max_tokens=20))
    assert llm.stats["steps"] == steps
