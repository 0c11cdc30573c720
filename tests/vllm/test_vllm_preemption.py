"""A KV cache too small for the batch: vLLM preempts and recomputes requests, and the tokens and logprobs still
equal the native engine's and the trainer's (the sampler's noise is keyed by output position, not by step)."""
import random

import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import build_tiny, sequence_logprobs

TINY = dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
            max_position_embeddings=128)


def test_preemption_keeps_tokens_and_logprobs():
    from onpolicy.engine.vllm_backend import VllmLLM

    model, tok = build_tiny(seed=2, **TINY)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 60) for _ in range(rng.randint(20, 40))] for _ in range(12)]
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=5, ignore_eos=True)
    with kernels.invariant_mode(True), torch.no_grad():
        # 8 blocks of 32 tokens hold ~4 of the 12 requests (each needs 2-3 blocks by its end)
        llm = VllmLLM(model, tok, EngineConfig(num_blocks=8, max_num_seqs=12, max_num_batched_tokens=256,
                                                enable_prefix_caching=False), seed=0)
        outs = llm.generate(prompts, params)
        native = LLM(model, tok, EngineConfig()).generate(prompts, params)
        ref = sequence_logprobs(model, prompts, [o.outputs[0].token_ids for o in outs])
    for o, n, r in zip(outs, native, ref):
        assert o.outputs[0].token_ids == n.outputs[0].token_ids
        assert torch.equal(o.outputs[0].logprobs, r) and torch.equal(o.outputs[0].logprobs, n.outputs[0].logprobs)
    # a recomputed request re-runs its prefill (no prefix cache): more tokens went through the model than
    # prompts + outputs
    assert llm.stats["forward_tokens"] > sum(len(p) + 39 for p in prompts)
