"""GPU (H100): every supported family at its real layer shape (4 layers of the published hidden / heads /
head_dim / intermediate, vocab 128, bf16, random weights) on the Triton kernels: engine logprobs under a mixed
workload (ragged prompts past position 1,000, chunked prefill beside decode, n=2 samples sharing prompt blocks,
CUDA graphs) are torch.equal to the trainer's packed forward."""
import pytest
import torch

from arch_cases import REAL, real_shape_hf_config, skip_reason
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import CausalLM, ModelConfig, init_weights, sequence_logprobs
from onpolicy.model.tiny import CharTokenizer

pytestmark = pytest.mark.gpu


def _prompts(seed):
    g = torch.Generator().manual_seed(seed)
    lens = [1100, 700, 3, 64, 250, 17, 1, 129]
    return [torch.randint(4, 80, (n,), generator=g).tolist() for n in lens]


# MoE rows: tests/model/test_moe_gpu.py (2 layers, weights drawn on the GPU: 4 layers of 128 experts drawn on the
# CPU take minutes)
@pytest.mark.parametrize("name", [n for n in REAL if REAL[n]["model_type"] != "qwen3_moe"])
def test_engine_equals_trainer_real_shape(name):
    if skip_reason(name):
        pytest.skip(skip_reason(name))
    hf = real_shape_hf_config(name, layers=4).to_dict()
    model = init_weights(CausalLM(ModelConfig.from_hf(hf, dtype="bfloat16"), init=False), seed=3).to("cuda").eval()
    llm = LLM(model, CharTokenizer(), EngineConfig(num_blocks=1024, block_size=16, max_num_batched_tokens=256,
                                                   max_num_seqs=16))
    params = [SamplingParams(n=2, temperature=[1.0, 0.7][i % 2], max_tokens=8 + 5 * i, seed=i) for i in range(8)]
    outs = llm.generate(_prompts(0), params)
    groups = {}
    for out, p in zip(outs, params):
        for c in out.outputs:
            for part, item in zip(groups.setdefault(p.temperature, ([], [], [])),
                                  (out.prompt_token_ids, c.token_ids, c.logprobs)):
                part.append(item)
    for t, (prompts, completions, engine) in groups.items():
        with torch.no_grad():
            trainer = sequence_logprobs(model, prompts, completions, t)
        for i, (a, b) in enumerate(zip(engine, trainer)):
            b = b.to(a.device)
            assert torch.equal(a, b), (name, t, i, float((a - b).abs().max()))
