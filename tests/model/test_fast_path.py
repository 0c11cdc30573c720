"""`invariant: false` (torch's fast defaults) agrees with the plain torch references, forward and backward:
chunked-vocab `token_logprobs` vs full-logits log_softmax, unpadded training attention vs the padded reference."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, attention_reference, attention_varlen, training_metadata
from onpolicy.kernels.logprobs import VOCAB_CHUNK, token_logprobs, token_logprobs_reference


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    (out * torch.linspace(-1.0, 1.0, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_token_logprobs_match_reference(temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 32, generator=g)
    weight = torch.randn(2 * VOCAB_CHUNK + 5, 32, generator=g) * 0.2
    targets = torch.tensor([0, 5, VOCAB_CHUNK - 1, VOCAB_CHUNK, 2 * VOCAB_CHUNK + 4, 17, 3, 4096 + 9, 8190])
    with kernels.invariant_mode(False):
        got, got_g = _grads(lambda h, w: token_logprobs(h, w, targets, temperature), hidden, weight)
    ref, ref_g = _grads(lambda h, w: token_logprobs_reference(h, w, targets, temperature), hidden, weight)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fast_training_attention_matches_padded_reference():
    g = torch.Generator().manual_seed(1)
    lens = [5, 1, 12, 7]
    cu = torch.tensor([0, 5, 6, 18, 25], dtype=torch.int32)
    q = torch.randn(sum(lens), 4, 64, generator=g)
    k = torch.randn(sum(lens), 2, 64, generator=g)
    v = torch.randn(sum(lens), 2, 64, generator=g)
    with kernels.invariant_mode(False):
        got, got_g = _grads(lambda a, b, c: attention_varlen(a, b, c, cu), q, k, v)
    meta = training_metadata(cu)
    ref, ref_g = _grads(lambda a, b, c: attention_reference(a, b, c, cu, *meta, TRAINING_BLOCK_SIZE), q, k, v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
