"""Batch invariance of kernels.logprobs: a row's result computed alone is bitwise equal (`torch.equal`) to the
same row inside batches of 1..512 rows at random positions. CPU here; `gpu`-marked tests use the Qwen3 vocab
(151936) and hidden 1024 in bf16 on CUDA."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels import logprobs as L

BATCH_SIZES = [1, 2, 3, 4, 7, 16, 33, 64, 100, 257, 512]
V_RAGGED = 2 * L.VOCAB_CHUNK + 77


PROBES = 4  # rows computed alone, then placed together at random positions of every batch


def _check_rows_invariant(fn, make_rows, sizes, seed=0):
    """fn on each of PROBES rows alone vs the same rows inside batches of each size at random positions.

    make_rows(n, g) -> tuple of per-row tensors (dim 0 = rows). Returns the sizes where any probe differed."""
    g = torch.Generator().manual_seed(seed)
    probes = make_rows(PROBES, g)
    alone = [fn(*[p[i : i + 1] for p in probes]) for i in range(PROBES)]
    differed = []
    for n in sizes:
        k = min(n, PROBES)
        batch = list(make_rows(n, g))
        pos = torch.randperm(n, generator=g)[:k]
        for b, p in zip(batch, probes):
            b[pos] = p[:k]
        out = fn(*batch)
        if not all(torch.equal(out[int(pos[i]) : int(pos[i]) + 1], alone[i]) for i in range(k)):
            differed.append(n)
    return differed


def _rows(V, H, dtype, device="cpu", scale=3.0):
    def make(n, g):
        h = (torch.randn(n, H, generator=g) * scale).to(device=device, dtype=dtype)
        t = torch.randint(0, V, (n,), generator=g).to(device)
        return h, t
    return make


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_token_logprobs_cpu_batch_invariant(dtype, temperature):
    w = (torch.randn(V_RAGGED, 64, generator=torch.Generator().manual_seed(1)) / 8).to(dtype)
    fn = lambda h, t: kernels.token_logprobs(h, w, t, temperature)  # noqa: E731
    assert _check_rows_invariant(fn, _rows(V_RAGGED, 64, dtype), BATCH_SIZES) == []


def test_lm_logits_and_log_softmax_cpu_batch_invariant():
    w = torch.randn(V_RAGGED, 32, generator=torch.Generator().manual_seed(2)).bfloat16()
    logits = lambda h, t: kernels.lm_logits(h, w, 0.7)  # noqa: E731
    assert _check_rows_invariant(logits, _rows(V_RAGGED, 32, torch.bfloat16), BATCH_SIZES[:8]) == []
    lsm = lambda x, t: kernels.log_softmax(x)  # noqa: E731
    assert _check_rows_invariant(lsm, _rows(10, V_RAGGED, torch.float32, scale=4.0), BATCH_SIZES) == []


def test_token_logprobs_cpu_thread_count_invariant():
    """Sampler and trainer processes may run different CPU thread counts: results must not move."""
    h, t = _rows(V_RAGGED, 64, torch.float32)(40, torch.Generator().manual_seed(4))
    w = torch.randn(V_RAGGED, 64, generator=torch.Generator().manual_seed(5)) / 8
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append((kernels.token_logprobs(h, w, t, 0.7), kernels.log_softmax(h.repeat(1, 150))))
    finally:
        torch.set_num_threads(threads)
    for lp, ls in outs[1:]:
        assert torch.equal(lp, outs[0][0]) and torch.equal(ls, outs[0][1])


def _split_k_token_logprobs(h, w, t):
    """Token logprobs whose GEMM splits K by a row-count heuristic, as GEMM libraries pick split-K by M: the
    batch dependence the harness exists to catch (MKL's GEMMs, in the strict mode onpolicy sets, may not show one)."""
    splits = 4 if h.shape[0] >= 16 else 1
    logits = torch.stack([h[:, i::splits] @ w[:, i::splits].t() for i in range(splits)]).sum(0)
    return torch.log_softmax(logits, -1).gather(-1, t[:, None])[:, 0]


def test_harness_detects_non_invariant_reference():
    """The same check on a batch-dependent GEMM must find a difference, or the tests above prove nothing."""
    w = torch.randn(V_RAGGED, 256, generator=torch.Generator().manual_seed(3)) / 16
    differed = _check_rows_invariant(lambda h, t: _split_k_token_logprobs(h, w, t), _rows(V_RAGGED, 256, torch.float32),
                                     BATCH_SIZES)
    assert differed, "a split-K chosen by the row count looked batch invariant: this harness would not catch it"
    fn = lambda h, t: kernels.token_logprobs(h, w, t)  # noqa: E731
    assert _check_rows_invariant(fn, _rows(V_RAGGED, 256, torch.float32), BATCH_SIZES) == []


def test_log_softmax_triton_interpreted_invariant():
    lsm = lambda x, t: L._log_softmax_triton(x, block=64)  # noqa: E731
    assert _check_rows_invariant(lsm, _rows(10, 300, torch.float32, scale=4.0), [1, 3, 8]) == []


QWEN3_VOCAB, QWEN3_HIDDEN = 151936, 1024
GPU_SIZES = [1, 2, 3, 5, 8, 16, 31, 64, 127, 256, 512]


@pytest.fixture(scope="module")
def qwen3_head():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(QWEN3_VOCAB, QWEN3_HIDDEN, generator=g) * 0.02).to("cuda", torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_token_logprobs_cuda_batch_invariant(qwen3_head, temperature):
    fn = lambda h, t: kernels.token_logprobs(h, qwen3_head, t, temperature)  # noqa: E731
    assert _check_rows_invariant(fn, _rows(QWEN3_VOCAB, QWEN3_HIDDEN, torch.bfloat16, "cuda"), GPU_SIZES) == []


@pytest.mark.gpu
def test_lm_logits_and_log_softmax_cuda_batch_invariant(qwen3_head):
    logits = lambda h, t: kernels.lm_logits(h, qwen3_head, 0.7)  # noqa: E731
    make = _rows(QWEN3_VOCAB, QWEN3_HIDDEN, torch.bfloat16, "cuda")
    assert _check_rows_invariant(logits, make, GPU_SIZES) == []
    lsm = lambda h, t: kernels.log_softmax(kernels.lm_logits(h, qwen3_head))  # noqa: E731
    assert _check_rows_invariant(lsm, make, GPU_SIZES) == []


@pytest.mark.gpu
def test_cuda_matches_reference(qwen3_head):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(64, QWEN3_HIDDEN, generator=g).to("cuda", torch.bfloat16)
    t = torch.randint(0, QWEN3_VOCAB, (64,), generator=g).cuda()
    for T in (0.7, 1.0):
        out = kernels.token_logprobs(h, qwen3_head, t, T)
        torch.testing.assert_close(out, L.token_logprobs_reference(h, qwen3_head, t, T), atol=3e-2, rtol=1e-2)
        x = kernels.lm_logits(h, qwen3_head, T)
        torch.testing.assert_close(kernels.log_softmax(x), L.log_softmax_reference(x), atol=1e-4, rtol=1e-5)
    hf = h.float().requires_grad_()
    wf = qwen3_head[:20000].float().requires_grad_()
    tf = t % 20000
    kernels.token_logprobs(hf, wf, tf, 0.7).sum().backward()
    gh, gw = hf.grad, wf.grad
    hf.grad = wf.grad = None
    L.token_logprobs_reference(hf, wf, tf, 0.7).sum().backward()
    torch.testing.assert_close(gh, hf.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gw, wf.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_cuda_wide_gemm_spans_equal_one_chunk_gemms(qwen3_head, temperature):
    """One LM-head GEMM over many chunks gives each logit bitwise as one GEMM per chunk (same tile config), and
    one fold launch over a span equals one launch per chunk: the premise of _gemm_spans."""
    g = torch.Generator().manual_seed(6)
    h = torch.randn(24, QWEN3_HIDDEN, generator=g).to("cuda", torch.bfloat16)
    t = torch.randint(0, QWEN3_VOCAB, (24,), generator=g).cuda()
    wide, _ = L._token_logprobs_forward(h, qwen3_head, t, temperature, budget=None)
    per_chunk, _ = L._token_logprobs_forward(h, qwen3_head, t, temperature, budget=1)
    assert torch.equal(wide, per_chunk)


@pytest.mark.gpu
def test_cuda_harness_detects_batch_dependence(qwen3_head):
    """The harness must flag an op whose rows depend on the batch size (here: a row shift of M * 1e-3).

    (cuBLAS + torch log_softmax happened to be invariant at this shape on the H100, so it cannot serve.)"""
    def fn(h, t):
        return kernels.token_logprobs(h, qwen3_head, t) + h.shape[0] * 1e-3
    differed = _check_rows_invariant(fn, _rows(QWEN3_VOCAB, QWEN3_HIDDEN, torch.bfloat16, "cuda"), GPU_SIZES)
    assert differed, "the invariance harness missed a batch-dependent op"


@pytest.mark.gpu
def test_token_logprobs_cuda_graph_replay_matches_eager(qwen3_head):
    """The engine may capture sampling in a CUDA graph: no host sync inside (the targets range check is skipped
    while capturing), and a replay gives the eager result bitwise."""
    g = torch.Generator().manual_seed(7)
    h = torch.randn(8, QWEN3_HIDDEN, generator=g).to("cuda", torch.bfloat16)
    t = torch.randint(0, QWEN3_VOCAB, (8,), generator=g).cuda()
    eager = kernels.token_logprobs(h, qwen3_head, t, 0.7)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) outside capture
        kernels.token_logprobs(h, qwen3_head, t, 0.7)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernels.token_logprobs(h, qwen3_head, t, 0.7)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
