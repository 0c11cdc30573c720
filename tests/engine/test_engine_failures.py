"""Engine failures: temperatures that cannot be computed are refused before compute, and any exception or Ctrl-C
inside `generate` aborts and frees its requests (the engine stays usable); `abort(request_ids)` as vLLM has."""
import math

import pytest
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.engine.params import MIN_TEMPERATURE


@pytest.mark.parametrize("temperature", [math.inf, -math.inf, math.nan, -0.5, 1e-40, MIN_TEMPERATURE / 2])
def test_uncomputable_temperature_is_refused(llm, temperature):
    with pytest.raises(ValueError, match=r"SamplingParams\.temperature: must be 0 \(greedy\) or a finite number >= "):
        llm.generate(["ab"], SamplingParams(max_tokens=2, temperature=temperature))
    assert llm.stats["steps"] == 0 and not llm.has_unfinished()
    out = llm.generate(["ab"], SamplingParams(max_tokens=3, temperature=MIN_TEMPERATURE, seed=1))[0].outputs[0]
    assert len(out.token_ids) == 3 and torch.isfinite(out.logprobs).all()


def test_sampling_config_uses_the_same_bound():
    from onpolicy.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=r"sampling\.temperature: got 1e-40"):
        ExperimentConfig(sampling={"temperature": 1e-40})


def _expected(tiny):
    fresh = LLM(tiny[0], tiny[1], EngineConfig(num_blocks=64, block_size=8))
    return [o.outputs[0].token_ids for o in fresh.generate(["abc", "hello"], SamplingParams(max_tokens=5, seed=3))]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_generate_aborts_its_requests_on_any_exception(llm, tiny, monkeypatch, error):
    calls = {"n": 0}
    real = llm.runner.step

    def failing(chunks):
        calls["n"] += 1
        if calls["n"] == 2:  # mid-generation: blocks allocated and prefix keys registered
            raise error
        return real(chunks)

    monkeypatch.setattr(llm.runner, "step", failing)
    monkeypatch.setattr(llm.config, "async_scheduling", False)
    with pytest.raises(type(error)):
        llm.generate(["abc", "hello"], SamplingParams(max_tokens=5, seed=3))
    assert not llm.has_unfinished() and not llm.requests
    assert llm.block_manager.num_free == llm.runner.num_blocks  # every block back
    monkeypatch.undo()
    again = llm.generate(["abc", "hello"], SamplingParams(max_tokens=5, seed=3))  # usable, and right
    assert [o.outputs[0].token_ids for o in again] == _expected(tiny)


def test_abort_api(llm):
    keep = llm.add_request("abc", SamplingParams(max_tokens=4, seed=1))
    drop = llm.add_request("hello", SamplingParams(n=2, max_tokens=4, seed=2))
    llm.step()
    assert llm.abort([drop, 12345]) == [drop]  # unknown ids are ignored, as vLLM does
    done = []
    while llm.has_unfinished():
        done += llm.step()
    assert [o.request_id for o in done] == [keep] and not llm.requests
    assert llm.block_manager.num_free == llm.runner.num_blocks


@pytest.mark.gpu
def test_gpu_abort_mid_async_decode_leaves_the_engine_exact():
    """On CUDA with async scheduling and graphs: an exception while a decode step is in flight aborts the call;
    the next generate gives a fresh engine's tokens and logprobs bitwise."""
    from onpolicy.model import CausalLM, ModelConfig

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = ModelConfig(architecture="qwen3", vocab_size=32000, hidden_size=256, intermediate_size=768,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=512, tie_word_embeddings=False, dtype="bfloat16")
    model = CausalLM(cfg).cuda().eval()
    prompts = [[(7 * i + j) % 31999 + 1 for j in range(5 + i)] for i in range(8)]
    params = SamplingParams(max_tokens=24, seed=5, ignore_eos=True)
    engine = dict(async_scheduling=True, use_cuda_graphs=True, num_blocks=256)
    want = LLM(model, None, EngineConfig(**engine)).generate(prompts, params)
    llm = LLM(model, None, EngineConfig(**engine))
    real, calls = llm.runner.launch, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] == 5:  # a step is in flight
            raise KeyboardInterrupt
        return out

    llm.runner.launch = failing
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompts, params)
    assert calls["n"] >= 5 and not llm.has_unfinished() and llm.block_manager.num_free == llm.runner.num_blocks
    llm.runner.launch = real
    got = llm.generate(prompts, params)
    for a, b in zip(want, got):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert torch.equal(a.outputs[0].logprobs, b.outputs[0].logprobs)
