"""GPU (H100): every supported family at its real layer shape (4 layers of the published hidden / heads /
head_dim / intermediate, vocab 128, bf16, random weights) on the Triton kernels: engine logprobs under a mixed
workload (ragged prompts past position 1,000, chunked prefill beside decode, n=2 samples sharing prompt blocks,
CUDA graphs) are torch.equal to the trainer's packed forward."""
import pytest
import torch

from arch_cases import REAL, mixed_workload_pairs, real_shape_hf_config, skip_reason
from onpolicy.model import CausalLM, ModelConfig, init_weights

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", [n for n in REAL if REAL[n]["model_type"] != "qwen3_moe"])
def test_engine_equals_trainer_real_shape(name):
    if skip_reason(name):
        pytest.skip(skip_reason(name))
    hf = real_shape_hf_config(name, layers=4).to_dict()
    model = init_weights(CausalLM(ModelConfig.from_hf(hf, dtype="bfloat16"), init=False), seed=3).to("cuda").eval()
    pairs, _ = mixed_workload_pairs(model)
    for i, (a, b) in enumerate(pairs):
        assert torch.equal(a, b), (name, i, float((a - b).abs().max()))
