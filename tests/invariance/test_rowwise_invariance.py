"""Row-wise batch invariance (`torch.equal`) of linear, rms_norm, silu_mul and rope.

A row computed alone must equal the same row computed at a random position inside batches of many sizes. CPU
tests run the CPU torch paths (fp32, bf16); `gpu` tests run the Triton kernels on Qwen3 shapes and report that
cuBLAS is not invariant at K=6144, N=2048. A self-test proves the harness catches a batch-dependent op.
"""
import pytest
import torch

from onpolicy.kernels import linear, rms_norm, rope, rope_cache, silu_mul

BATCH_SIZES = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 64, 100, 127, 128, 129, 255, 256, 257, 512]
DTYPES = [torch.float32, torch.bfloat16]


def first_batch_dependence(op, make_rows, device, dtype, sizes=BATCH_SIZES, seed=0):
    """Return (batch size, position) where `op(row alone)` != that row inside a batch, or None if none.

    make_rows(n, gen) -> tuple of tensors whose dim 0 is the row dim; op(*rows) -> output with rows on dim 0.
    """
    gen = torch.Generator().manual_seed(seed)
    for n in sizes:
        rows = [t.to(device) for t in make_rows(n, gen)]
        rows = [t.to(dtype) if t.is_floating_point() else t for t in rows]
        pos = int(torch.randint(0, n, (1,), generator=gen))
        full = op(*rows)
        alone = op(*[t[pos : pos + 1] for t in rows])
        if not torch.equal(full[pos : pos + 1], alone):
            return n, pos
    return None


def linear_case(K, N, device, dtype):
    w = (torch.randn(N, K, generator=torch.Generator().manual_seed(1)) / K**0.5).to(device, dtype)
    return (lambda x: linear(x, w)), (lambda n, g: (torch.randn(n, K, generator=g),))


def rms_norm_case(H, device, dtype):
    w = (1 + 0.1 * torch.randn(H, generator=torch.Generator().manual_seed(1))).to(device, dtype)
    return (lambda x: rms_norm(x, w, 1e-6)), (lambda n, g: (3 * torch.randn(n, H, generator=g),))


def silu_mul_case(N):
    return silu_mul, (lambda n, g: (4 * torch.randn(n, N, generator=g), torch.randn(n, N, generator=g)))


def rope_case(heads, D, device, max_pos=4096):
    cache = rope_cache(max_pos, D, 1_000_000.0, device)
    return ((lambda x, p: rope(x, p, cache)),
            (lambda n, g: (torch.randn(n, heads, D, generator=g), torch.randint(0, max_pos, (n,), generator=g))))


def test_harness_detects_a_batch_dependent_op():
    def leaky(x):  # subtracts the batch mean: every row depends on the others
        return x - x.mean(0, keepdim=True)

    assert first_batch_dependence(leaky, lambda n, g: (torch.randn(n, 8, generator=g),), "cpu", torch.float32,
                                  sizes=[3, 4]) is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,N", [(256, 768), (96, 200)])
def test_linear_cpu(dtype, K, N):
    assert first_batch_dependence(*linear_case(K, N, "cpu", dtype), "cpu", dtype) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [64, 128, 1024])
def test_rms_norm_cpu(dtype, H):
    assert first_batch_dependence(*rms_norm_case(H, "cpu", dtype), "cpu", dtype) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [37, 768])
def test_silu_mul_cpu(dtype, N):
    assert first_batch_dependence(*silu_mul_case(N), "cpu", dtype) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_cpu(dtype):
    assert first_batch_dependence(*rope_case(4, 64, "cpu"), "cpu", dtype) is None


def test_linear_cpu_ragged_sequences_in_one_batch():
    # Ragged packing: sequences of different lengths concatenated; each sequence alone gives the same rows.
    op, _ = linear_case(128, 256, "cpu", torch.bfloat16)
    lens = [1, 5, 17, 64, 3, 100]
    seqs = [torch.randn(n, 128).bfloat16() for n in lens]
    packed = op(torch.cat(seqs))
    starts = torch.tensor([0] + lens).cumsum(0)
    for s, seq in zip(starts.tolist(), seqs):
        assert torch.equal(packed[s : s + seq.shape[0]], op(seq))


# ---------------------------------------------------------------- GPU (H100) -------------------------------
QWEN3_LINEAR = [(1024, 3072), (3072, 1024), (2048, 6144), (6144, 2048), (4096, 12288), (12288, 4096),
                (1024, 4096), (4096, 1024), (128, 1024)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,N", QWEN3_LINEAR)
def test_linear_gpu_qwen3_shapes(dtype, K, N):
    assert first_batch_dependence(*linear_case(K, N, "cuda", dtype), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [64, 128, 1024, 2048, 4096, 8192])
def test_rms_norm_gpu(dtype, H):
    assert first_batch_dependence(*rms_norm_case(H, "cuda", dtype), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_rows_gpu(dtype):
    # QK-norm: rms_norm over head_dim=128 on [tokens * heads, 128]; tokens batched with different counts.
    op, make = rms_norm_case(128, "cuda", dtype)
    assert first_batch_dependence(lambda x: op(x.reshape(-1, 128)).reshape(x.shape),
                                  lambda n, g: (torch.randn(n, 16, 128, generator=g),), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [3072, 6144, 12288])
def test_silu_mul_gpu(dtype, N):
    assert first_batch_dependence(*silu_mul_case(N), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [8, 16, 32])
def test_rope_gpu(dtype, heads):
    assert first_batch_dependence(*rope_case(heads, 128, "cuda"), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cublas_is_not_invariant_at_k6144_n2048_report(dtype):
    """Report only (no assert on cuBLAS): does torch.mm change a row with the batch size at K=6144, N=2048?"""
    w = torch.randn(2048, 6144, device="cuda", dtype=dtype) / 6144**0.5
    found = first_batch_dependence(lambda x: x @ w.t(), lambda n, g: (torch.randn(n, 6144, generator=g),),
                                   "cuda", dtype)
    print(f"cuBLAS {dtype} K=6144 N=2048: first batch-dependent (batch, row) = {found}")
    assert first_batch_dependence(*linear_case(6144, 2048, "cuda", dtype), "cuda", dtype) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_run_to_run_deterministic_gpu(dtype):
    x = torch.randn(300, 1024, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(3072, 1024, device="cuda", dtype=dtype, requires_grad=True)
    nw = torch.randn(1024, device="cuda", dtype=dtype, requires_grad=True)
    cache = rope_cache(512, 128, 1e6, "cuda")
    pos = torch.randint(0, 512, (300,), device="cuda")

    def grads():
        h = linear(rms_norm(x, nw, 1e-6), w)
        a = silu_mul(h[:, :1536], h[:, 1536:])
        r = rope(a.reshape(300, 12, 128), pos, cache)
        return torch.autograd.grad(r.float().square().sum(), (x, w, nw))

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 3e-2, 1.6e-2)])
def test_gpu_ops_match_reference(dtype, atol, rtol):
    from onpolicy.kernels import (linear_reference, matmul, matmul_reference, rms_norm_reference, rope_reference,
                         silu_mul_reference)

    x = torch.randn(257, 2048, device="cuda", dtype=dtype)
    w = torch.randn(6144, 2048, device="cuda", dtype=dtype) / 2048**0.5
    b = torch.randn(6144, device="cuda", dtype=dtype)
    ref_lin = linear_reference(x.float(), w.float(), b.float())
    torch.testing.assert_close(linear(x, w, b).float(), ref_lin, atol=atol * 4, rtol=rtol)
    torch.testing.assert_close(matmul(x, w.t().contiguous()).float(), matmul_reference(x.float(), w.float().t()),
                               atol=atol * 4, rtol=rtol)
    nw = torch.randn(2048, device="cuda", dtype=dtype)
    torch.testing.assert_close(rms_norm(x, nw, 1e-6).float(), rms_norm_reference(x, nw, 1e-6).float(),
                               atol=atol, rtol=rtol)
    g, u = x[:, :1024], x[:, 1024:]
    torch.testing.assert_close(silu_mul(g, u).float(), silu_mul_reference(g, u).float(), atol=atol, rtol=rtol)
    cache = rope_cache(1024, 128, 1e6, "cuda")
    q, pos = x.reshape(257, 16, 128), torch.randint(0, 1024, (257,), device="cuda")
    torch.testing.assert_close(rope(q, pos, cache).float(), rope_reference(q, pos, cache).float(),
                               atol=atol, rtol=rtol)
