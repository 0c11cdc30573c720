"""The engine's one LM-head pass per step: the logprob it reports comes from the sampling logits through
`kernels.logits_token_logprobs`, which must equal the trainer's `token_logprobs` bitwise (CPU here; the GPU
proof is tests/engine/test_engine_fast_gpu.py)."""
import pytest
import torch

from onpolicy import kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprob_from_logits_equals_token_logprobs_cpu(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(9000, 64, generator=g) * 0.5).to(dtype)  # 9000 = 2 * VOCAB_CHUNK + a ragged tail
    for m in (1, 5, 33):
        h = torch.randn(m, 64, generator=g).to(dtype)
        t = torch.randint(0, 9000, (m,), generator=g)
        ref = kernels.token_logprobs(h, w, t, temperature)
        assert torch.equal(kernels.logits_token_logprobs(kernels.lm_logits(h, w, temperature), t, temperature, dtype), ref)


def test_logits_token_logprobs_default_mode_is_log_softmax():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 300, generator=g)
    t = torch.tensor([0, 5, 299, 17])
    with kernels.invariant_mode(False):
        got = kernels.logits_token_logprobs(x, t, 1.0, torch.float32)
    torch.testing.assert_close(got, torch.log_softmax(x, -1).gather(1, t[:, None])[:, 0])


def test_logits_token_logprobs_bad_input():
    with pytest.raises(ValueError, match="logits_token_logprobs: targets"):
        kernels.logits_token_logprobs(torch.zeros(2, 10), torch.tensor([0, 10]), 1.0, torch.float32)
    with pytest.raises(ValueError, match="logits must be 2-D"):
        kernels.logits_token_logprobs(torch.zeros(10), torch.tensor([0]), 1.0, torch.float32)
