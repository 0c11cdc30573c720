"""kernels.logprobs vs plain-torch references: forward (fp32/bf16, ragged vocab, temperatures), backward,
the Triton kernels under TRITON_INTERPRET=1 on tiny shapes, and clear ValueErrors on bad input."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels import logprobs as L
from onpolicy.kernels._common import invariant_mode

V_RAGGED = 2 * L.VOCAB_CHUNK + 77  # three chunks, the last one partial
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=1e-2)}


def _head(M, V, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(dtype)
    targets = torch.randint(0, V, (M,), generator=g)
    targets[0], targets[-1] = 0, V - 1  # first and last vocab entries (first and last, partial, chunk)
    return hidden, weight, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_softmax_matches_reference(dtype):
    x = (torch.randn(37, V_RAGGED) * 4).to(dtype)
    torch.testing.assert_close(kernels.log_softmax(x), L.log_softmax_reference(x), **TOL[torch.float32])
    assert kernels.log_softmax(x).dtype == torch.float32


@pytest.mark.parametrize("V,block", [(300, 64), (300, 512), (5000, L.LOG_SOFTMAX_BLOCK)])
def test_log_softmax_triton_interpreted(V, block):
    x = torch.randn(3, V) * 5
    torch.testing.assert_close(L._log_softmax_triton(x, block=block), L.log_softmax_reference(x),
                               atol=2e-5, rtol=1e-5)
    xt = torch.randn(V, 4).t()  # non-unit stride along V is made contiguous
    torch.testing.assert_close(L._log_softmax_triton(xt, block=block), L.log_softmax_reference(xt),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_token_logprobs_matches_reference(dtype, temperature):
    hidden, weight, targets = _head(19, V_RAGGED, 32, dtype)
    out = kernels.token_logprobs(hidden, weight, targets, temperature)
    ref = L.token_logprobs_reference(hidden, weight, targets, temperature)
    assert out.dtype == torch.float32 and out.shape == (19,)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    # int32 targets give the same result
    assert torch.equal(kernels.token_logprobs(hidden, weight, targets.int(), temperature), out)


@pytest.mark.parametrize("dtype,temperature", [(torch.float32, 0.7), (torch.bfloat16, 1.0)])
def test_token_logprobs_triton_update_interpreted(dtype, temperature):
    """The CUDA chunk-update kernel under TRITON_INTERPRET (bf16 at T=1: raw GEMM output upcast in-kernel)."""
    hidden, weight, targets = _head(3, L.VOCAB_CHUNK + 100, 8, dtype)
    out, lse = L._token_logprobs_forward(hidden, weight, targets, temperature, triton_update=True)
    ref = L.token_logprobs_reference(hidden, weight, targets, temperature)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    ref_lse = torch.logsumexp(kernels.lm_logits(hidden, weight, temperature), -1)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_gemm_spans():
    h = torch.zeros(4, 64, dtype=torch.bfloat16)
    V = 37 * L.VOCAB_CHUNK + 384
    assert L._gemm_spans(4, V, h, False, None) == [(c, min(c + L.VOCAB_CHUNK, V)) for c in range(0, V, L.VOCAB_CHUNK)]
    assert L._gemm_spans(4, V, h, True, None) == [(0, V)]
    assert L._gemm_spans(4, V, h, True, 4 * 10 * L.VOCAB_CHUNK) == [(0, 40960), (40960, 81920), (81920, 122880),
                                                                     (122880, V)]
    # a 1500-wide tail at K=2048 gets another GEMM tile config (narrow output, N < K): one chunk per GEMM
    assert len(L._gemm_spans(4, L.VOCAB_CHUNK + 1500, torch.zeros(4, 2048, dtype=torch.bfloat16), True, None)) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_token_logprobs_backward_matches_reference(dtype, temperature):
    hidden, weight, targets = _head(11, V_RAGGED, 16, dtype, seed=1)
    grad = torch.randn(11)
    grads = []
    for fn in (kernels.token_logprobs, L.token_logprobs_reference):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        fn(h, w, targets, temperature).backward(grad)
        grads.append((h.grad, w.grad))
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for ours, ref in zip(grads[0], grads[1]):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, ref, **tol)


def test_backward_only_hidden():
    hidden, weight, targets = _head(5, V_RAGGED, 16, torch.float32)
    h = hidden.clone().requires_grad_()
    kernels.token_logprobs(h, weight, targets).sum().backward()
    h2 = hidden.clone().requires_grad_()
    L.token_logprobs_reference(h2, weight, targets).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_lm_logits_divides_by_temperature(temperature):
    hidden, weight, _ = _head(6, 300, 16, torch.bfloat16)
    out = kernels.lm_logits(hidden, weight, temperature)
    assert out.dtype == torch.float32 and out.shape == (6, 300)
    assert torch.equal(out, kernels.linear(hidden, weight).float() / temperature)
    torch.testing.assert_close(out, L.lm_logits_reference(hidden, weight, temperature), atol=3e-2, rtol=1e-2)


def test_reference_mode_runs_reference():
    hidden, weight, targets = _head(4, 300, 8, torch.float32)
    with invariant_mode(False):
        assert torch.equal(kernels.token_logprobs(hidden, weight, targets),
                           L.token_logprobs_reference(hidden, weight, targets))
        x = torch.randn(3, 50)
        assert torch.equal(kernels.log_softmax(x), L.log_softmax_reference(x))


def test_empty_batch():
    hidden, weight, _ = _head(1, 300, 8, torch.float32)
    out = kernels.token_logprobs(hidden[:0], weight, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    assert kernels.log_softmax(torch.randn(0, 7)).shape == (0, 7)


def _bad_cases():
    h, w, t = _head(4, 300, 8, torch.float32)
    return [
        ((h, w, torch.tensor([0, 1, 2, 300])), "targets must lie in \\[0, 300\\) \\(the vocab size V\\)"),
        ((h, w, torch.tensor([0, -1, 2, 3])), "targets must lie in"),
        ((h, w, t[:3]), "targets must have shape \\[M\\]"),
        ((h, w, t.float()), "targets has dtype"),
        ((h, w, [0, 1, 2, 3]), "targets must be a torch.Tensor"),
        ((h, w[:, :4], t), "must equal weight.shape\\[1\\]"),
        ((h[0], w, t), "hidden must be 2-D"),
        ((h.bfloat16(), w, t), "must have one dtype"),
        ((h.long(), w, t), "hidden has dtype int64; allowed"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_input_token_logprobs(case):
    args, msg = _bad_cases()[case]
    with pytest.raises(ValueError, match="kernels.token_logprobs: .*" + msg):
        kernels.token_logprobs(*args)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), True, "1.0", None])
def test_bad_temperature(temperature):
    h, w, t = _head(2, 50, 8, torch.float32)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        kernels.token_logprobs(h, w, t, temperature)
    with pytest.raises(ValueError, match="kernels.lm_logits: temperature"):
        kernels.lm_logits(h, w, temperature)


def test_bad_input_log_softmax():
    with pytest.raises(ValueError, match="kernels.log_softmax: x must be 2-D"):
        kernels.log_softmax(torch.randn(3))
    with pytest.raises(ValueError, match="kernels.log_softmax: x has dtype int64"):
        kernels.log_softmax(torch.zeros(2, 3, dtype=torch.long))
