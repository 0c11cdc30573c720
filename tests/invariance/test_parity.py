"""The core promise: every logprob the engine reports is torch.equal to the trainer's
`sequence_logprobs` for that completion -- under concurrency, ragged prompts, chunked prefill, prefix-cache
hits, preemption with recompute, requests joining mid-run, and temperatures 0 / 0.7 / 1.0. Also: a seeded
request gives identical tokens and logprobs alone and inside a loaded batch.

The trainer side scores all completions of a test in one packed batch (a different batch than any the
sampler ran), so equality needs batch invariance on both sides, not just the same code.
"""
import pytest
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny

TEMPS = [0.0, 0.7, 1.0]


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=1, head_dim=64, num_hidden_layers=2)
    return model.eval(), tok


def _prompts(n, lo, hi, seed=0, vocab=80):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(4, vocab, (k,), generator=g).tolist() for k in lens]


def assert_parity(model, outputs, temperature):
    """Score every completion with the trainer's packed forward and compare bitwise."""
    prompts, completions, engine_lps = [], [], []
    for out in outputs:
        for c in out.outputs:
            assert c.logprobs is not None and c.logprobs.dtype == torch.float32
            assert c.logprobs.shape == (len(c.token_ids),) and len(c.token_ids) >= 1
            prompts.append(out.prompt_token_ids)
            completions.append(c.token_ids)
            engine_lps.append(c.logprobs)
    t = temperature if temperature > 0 else 1.0  # greedy reports temperature-1 logprobs
    with torch.no_grad():
        trainer_lps = sequence_logprobs(model, prompts, completions, t)
    for i, (a, b) in enumerate(zip(engine_lps, trainer_lps)):
        assert torch.equal(a, b), f"completion {i}: max |diff| {float((a - b).abs().max())}"
    return len(completions)


def _params(n_req, temperature, max_lo=2, max_hi=8, **kw):
    return [SamplingParams(temperature=temperature, max_tokens=max_lo + i % (max_hi - max_lo + 1), seed=100 + i, **kw)
            for i in range(n_req)]


@pytest.mark.parametrize("temperature", TEMPS)
@pytest.mark.parametrize("n_req", [1, 13])
def test_parity_concurrent_ragged(tiny, temperature, n_req):
    model, tok = tiny
    llm = LLM(model, tok, EngineConfig(num_blocks=256, max_num_batched_tokens=512))
    outs = llm.generate(_prompts(n_req, 1, 40, seed=n_req), _params(n_req, temperature))
    assert assert_parity(model, outs, temperature) == n_req
    lengths = {len(o.outputs[0].token_ids) for o in outs}
    assert n_req == 1 or len(lengths) > 1  # they finished at different steps


def test_parity_64_requests_chunked_topk_topp(tiny):
    model, tok = tiny
    n_req = 64
    params = [SamplingParams(temperature=0.7 if i % 2 else 1.0, top_k=[-1, 5, 20][i % 3], top_p=[1.0, 0.9][i % 2],
                             max_tokens=1 + i % 6, seed=i) for i in range(n_req)]
    llm = LLM(model, tok, EngineConfig(num_blocks=512, max_num_batched_tokens=96, max_num_seqs=48))
    outs = llm.generate(_prompts(n_req, 1, 48, seed=3), params)
    by_temp = {}
    for o, p in zip(outs, params):
        by_temp.setdefault(p.temperature, []).append(o)
    assert sum(assert_parity(model, group, t) for t, group in by_temp.items()) == n_req


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_parity_chunked_prefill(tiny, temperature):
    model, tok = tiny
    llm = LLM(model, tok, EngineConfig(num_blocks=256, max_num_batched_tokens=7, block_size=4))
    outs = llm.generate(_prompts(5, 10, 30, seed=5), _params(5, temperature, 3, 6))
    assert llm.stats["steps"] > 30 / 7  # the long prompts really were split over steps
    assert assert_parity(model, outs, temperature) == 5


def test_parity_prefix_cache_hits_n_samples(tiny):
    model, tok = tiny
    shared = _prompts(1, 37, 37, seed=7)[0]
    prompts = [shared, shared[:20] + [5, 6, 7], shared, shared + [9]]
    llm = LLM(model, tok, EngineConfig(num_blocks=256, block_size=8, max_num_batched_tokens=64))
    outs = llm.generate(prompts, SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=11))
    assert llm.block_manager.num_hits >= 3 * 32  # the G samples share the prompt; later requests hit too
    assert assert_parity(model, outs, 1.0) == 16
    # the n samples of one request are different streams
    assert len({tuple(c.token_ids) for c in outs[0].outputs}) > 1
    # a second generate hits blocks cached by the first one (kept after the sequences finished)
    hits = llm.block_manager.num_hits
    again = llm.generate([shared], SamplingParams(n=1, temperature=1.0, max_tokens=6, seed=11))
    assert llm.block_manager.num_hits - hits == 32
    assert again[0].outputs[0].token_ids == outs[0].outputs[0].token_ids
    assert torch.equal(again[0].outputs[0].logprobs, outs[0].outputs[0].logprobs)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_parity_preemption_recompute(tiny, prefix_caching):
    model, tok = tiny
    cfg = EngineConfig(num_blocks=12, block_size=4, max_num_batched_tokens=64, enable_prefix_caching=prefix_caching)
    llm = LLM(model, tok, cfg)
    params = [SamplingParams(n=1 + i % 2, temperature=0.7, max_tokens=8 + i % 5, seed=100 + i) for i in range(6)]
    outs = llm.generate(_prompts(6, 6, 14, seed=9), params)  # n=2: shared prompt blocks outlive a victim
    assert llm.scheduler.num_preemptions > 0
    assert assert_parity(model, outs, 0.7) == 9
    assert llm.block_manager.num_free == 12


def test_parity_requests_join_mid_run(tiny):
    model, tok = tiny
    llm = LLM(model, tok, EngineConfig(num_blocks=256, max_num_batched_tokens=32))
    prompts = _prompts(8, 2, 25, seed=4)
    params = _params(8, 0.7, 3, 9)
    done = []
    for i in range(8):
        llm.add_request(prompts[i], params[i])  # a new request every step
        done += llm.step()
    while llm.has_unfinished():
        done += llm.step()
    assert len(done) == 8
    assert assert_parity(model, sorted(done, key=lambda o: o.request_id), 0.7) == 8


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_seeded_request_alone_equals_in_loaded_batch(tiny, temperature):
    model, tok = tiny
    probe = _prompts(1, 21, 21, seed=12)[0]
    probe_params = SamplingParams(temperature=temperature, top_p=0.95, max_tokens=8, seed=1234)
    alone = LLM(model, tok, EngineConfig(num_blocks=64)).generate([probe], probe_params)[0].outputs[0]
    others = _prompts(11, 1, 30, seed=13)
    busy = LLM(model, tok, EngineConfig(num_blocks=128, max_num_batched_tokens=24, block_size=8))
    outs = busy.generate(others[:5] + [probe] + others[5:], _params(5, 1.0) + [probe_params] + _params(6, 0.7))
    loaded = outs[5].outputs[0]
    assert loaded.token_ids == alone.token_ids
    assert torch.equal(loaded.logprobs, alone.logprobs)


@pytest.mark.slow
def test_parity_256_requests(tiny):
    model, tok = tiny
    n_req = 256
    llm = LLM(model, tok, EngineConfig(num_blocks=1024, max_num_batched_tokens=1024))
    outs = llm.generate(_prompts(n_req, 1, 60, seed=21), _params(n_req, 1.0, 1, 12))
    assert assert_parity(model, outs, 1.0) == n_req


@pytest.mark.parametrize("trial", range(8))
def test_parity_random_engine_configs(tiny, trial):
    """Fuzz: random block size, cache size, budget, max_num_seqs, n, shared prefixes and temperatures."""
    import random

    model, tok = tiny
    rng = random.Random(trial)
    bs = rng.choice([2, 4, 8, 16])
    base = _prompts(1, 40, 40, seed=50 + trial)[0]
    prompts = [base[: rng.randint(1, 40)] if rng.random() < 0.5 else _prompts(1, 1, 40, seed=rng.randint(0, 999))[0]
               for _ in range(rng.randint(2, 9))]
    temp = rng.choice(TEMPS)
    params = [SamplingParams(n=rng.randint(1, 3), temperature=temp, max_tokens=rng.randint(1, 10), seed=i,
                             top_k=rng.choice([-1, 7]), top_p=rng.choice([1.0, 0.8])) for i in range(len(prompts))]
    num_blocks = -(-50 // bs) + rng.randint(0, 40)
    cfg = EngineConfig(block_size=bs, num_blocks=num_blocks, max_num_batched_tokens=rng.randint(4, 80),
                       max_num_seqs=rng.randint(1, 12), enable_prefix_caching=rng.random() < 0.8)
    llm = LLM(model, tok, cfg)
    outs = llm.generate(prompts, params)
    assert assert_parity(model, outs, temp) == sum(p.n for p in params)
    assert llm.block_manager.num_free == num_blocks
