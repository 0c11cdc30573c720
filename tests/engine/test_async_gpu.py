"""GPU (H100): async scheduling with real CUDA graphs gives the synchronous engine's outputs bitwise -- tokens,
logprobs, finish reasons -- across batch sizes (graph buckets), stop ids hit mid-run (wasted rows), max_tokens,
top-k rows (the synchronous fallback), preemption and prefix-cache hits; and the trainer's logprobs."""
import pytest
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import CausalLM, ModelConfig, sequence_logprobs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_model():
    cfg = ModelConfig(architecture="qwen3", vocab_size=32000, hidden_size=512, intermediate_size=1536,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                      max_position_embeddings=1024, tie_word_embeddings=False, dtype="bfloat16")
    return CausalLM(cfg).cuda().eval()


def _run(model, prompts, params, async_scheduling, **cfg):
    llm = LLM(model, None, EngineConfig(async_scheduling=async_scheduling, **cfg), seed=0)
    outs = llm.generate(prompts, params)
    return [(c.token_ids, c.logprobs, c.finish_reason) for o in outs for c in o.outputs], llm


@pytest.mark.parametrize("batch,blocks", [(1, 512), (5, 512), (37, 512), (64, 100)])
def test_gpu_async_equals_sync(gpu_model, batch, blocks):
    g = torch.Generator().manual_seed(batch)
    shared = torch.randint(4, 32000, (40,), generator=g).tolist()
    prompts = [(shared if i % 3 == 0 else []) + torch.randint(4, 32000, (5 + i % 50,), generator=g).tolist()
               for i in range(batch)]
    stop_ids = list(range(4, 32000, 25))  # 4% of the vocab: stops land mid-run
    params = [SamplingParams(temperature=[1.0, 0.0, 1.0][i % 3], max_tokens=8 + (13 * i) % 90, seed=i,
                             top_k=50 if i % 11 == 10 else -1, stop_token_ids=stop_ids if i % 2 else None)
              for i in range(batch)]
    cfg = dict(num_blocks=blocks, block_size=16, max_num_seqs=64, max_num_batched_tokens=512)
    sync, _ = _run(gpu_model, prompts, params, False, **cfg)
    asyn, llm = _run(gpu_model, prompts, params, True, **cfg)
    assert [(t, r) for t, _, r in sync] == [(t, r) for t, _, r in asyn]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(sync, asyn))
    assert llm.stats["async_steps"] > 0 and llm.runner.graphs.replays > 0
    if batch > 1:
        assert {r for _, _, r in asyn} == {"stop", "length"}
    if blocks == 100:
        assert llm.scheduler.num_preemptions > 0
    with torch.no_grad():  # and the trainer's logprobs
        temps = [p.temperature or 1.0 for p in params]
        for t in set(temps):
            rows = [i for i, x in enumerate(temps) if x == t]
            ref = sequence_logprobs(gpu_model, [prompts[i] for i in rows], [asyn[i][0] for i in rows], t)
            assert all(torch.equal(asyn[i][1], r.cpu()) for i, r in zip(rows, ref))
