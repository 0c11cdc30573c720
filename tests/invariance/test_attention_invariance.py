"""Bitwise (`torch.equal`) invariance of attention: one token's output must not depend on its batch, its
position in the batch, or the caller (training varlen, paged prefill, token-by-token decode, chunked prefill),
at every head_dim and with a sliding window.

The paged cache starts as NaN garbage and unused block-table entries point at other sequences' blocks, so a
kernel that reads an unused slot without zeroing it fails here.
"""
import functools
import os
import random

import pytest
import torch

from onpolicy.kernels import attention, attention_varlen
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, training_metadata
from onpolicy.kernels.attention_triton import attention_forward_triton

BLOCK_SIZE = 16


def _cu(lens, device):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _rand(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


class PagedCache:
    """A NaN-filled paged K/V cache with shuffled blocks; unused table entries point at random blocks."""

    def __init__(self, lens, hkv, d, dtype, device, rng: random.Random):
        need = [-(-n // BLOCK_SIZE) for n in lens]
        num_blocks = sum(need) + 3
        ids = list(range(num_blocks))
        rng.shuffle(ids)
        max_blocks = max(need) + 2
        table = [[rng.randrange(num_blocks) for _ in range(max_blocks)] for _ in lens]
        pos = 0
        for b, n in enumerate(need):
            table[b][:n] = ids[pos : pos + n]
            pos += n
        self.table = torch.tensor(table, dtype=torch.int32, device=device)
        self.k = torch.full((num_blocks * BLOCK_SIZE, hkv, d), float("nan"), dtype=dtype, device=device)
        self.v = torch.full_like(self.k, float("nan"))

    def slots(self, b, positions):
        pos = torch.as_tensor(positions, device=self.k.device, dtype=torch.long)
        return self.table[b, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE

    def write(self, b, positions, k, v):
        s = self.slots(b, positions)
        self.k[s] = k
        self.v[s] = v

    def attend(self, q, seq_ids, q_lens, ctx_lens, fn=attention):
        dev = q.device
        table = self.table[torch.tensor(seq_ids, device=dev)].contiguous()
        offs = torch.zeros(len(seq_ids), dtype=torch.int32, device=dev)
        return fn(q, self.k, self.v, _cu(q_lens, dev), torch.tensor(ctx_lens, dtype=torch.int32, device=dev), table, offs, BLOCK_SIZE)


def _case(lens, hq, hkv, d, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    t = sum(lens)
    return [_rand((t, h, d), dtype, device, gen) for h in (hq, hkv, hkv)]


def _check_all_callers(lens, hq, hkv, d, dtype, device, seed, decode=True, fn=attention, train_fn=None,
                       same=torch.equal, window=None):
    """Training output vs paged prefill, decode and chunked prefill: every token `same` (bitwise equal unless
    the caller passes a looser comparison). `window`: every caller's sliding window (default callers only)."""
    rng = random.Random(seed)
    q, k, v = _case(lens, hq, hkv, d, dtype, device, seed)
    cu = _cu(lens, device)
    starts = cu.tolist()
    fn = fn if window is None else functools.partial(fn, window=window)
    if train_fn is None:
        ref = attention_varlen(q, k, v, cu, window=window)
    else:
        ref = train_fn(q, k, v, cu)
    assert torch.isfinite(ref).all()

    def seq(x, b, lo, hi):
        return x[starts[b] + lo : starts[b] + hi]

    # 1. one-shot prefill into a shuffled paged cache, sequences in shuffled batch order
    cache = PagedCache(lens, hkv, d, dtype, device, rng)
    for b, n in enumerate(lens):
        cache.write(b, range(n), seq(k, b, 0, n), seq(v, b, 0, n))
    order = list(range(len(lens)))
    rng.shuffle(order)
    out = cache.attend(torch.cat([seq(q, b, 0, lens[b]) for b in order]), order, [lens[b] for b in order], [lens[b] for b in order], fn)
    got = torch.split(out, [lens[b] for b in order])
    for i, b in enumerate(order):
        assert same(got[i], seq(ref, b, 0, lens[b])), f"prefill differs for sequence {b} (len {lens[b]})"

    # 2. chunked prefill: random chunk sizes, prefix already cached, beyond-context slots still NaN
    cache = PagedCache(lens, hkv, d, dtype, device, rng)
    done = [0] * len(lens)
    while any(dn < n for dn, n in zip(done, lens)):
        pending = [b for b in range(len(lens)) if done[b] < lens[b]]
        ids = [b for b in pending if rng.random() < 0.8] or pending[:1]
        chunks = [min(lens[b] - done[b], rng.choice([1, 2, 7, 16, 17, 40, 100])) for b in ids]
        for b, c in zip(ids, chunks):
            cache.write(b, range(done[b], done[b] + c), seq(k, b, done[b], done[b] + c), seq(v, b, done[b], done[b] + c))
        qs = torch.cat([seq(q, b, done[b], done[b] + c) for b, c in zip(ids, chunks)])
        out = cache.attend(qs, ids, chunks, [done[b] + c for b, c in zip(ids, chunks)], fn)
        for (b, c), o in zip(zip(ids, chunks), torch.split(out, chunks)):
            assert same(o, seq(ref, b, done[b], done[b] + c)), f"chunked prefill differs: seq {b} at {done[b]}+{c}"
            done[b] += c

    # 3. token-by-token decode (every sequence one token a step, the batch shrinking as sequences end)
    if decode:
        cache = PagedCache(lens, hkv, d, dtype, device, rng)
        for step in range(max(lens)):
            ids = [b for b in range(len(lens)) if lens[b] > step]
            for b in ids:
                cache.write(b, [step], seq(k, b, step, step + 1), seq(v, b, step, step + 1))
            out = cache.attend(torch.cat([seq(q, b, step, step + 1) for b in ids]), ids, [1] * len(ids), [step + 1] * len(ids), fn)
            want = ref[torch.tensor([starts[b] + step for b in ids], device=device)]
            if not same(out, want):
                bad = [b for i, b in enumerate(ids) if not same(out[i], want[i])]
                raise AssertionError(f"decode differs at position {step} for sequences {bad}")


def _check_alone_vs_packed(lens_pool, hq, hkv, d, dtype, device, seed, batch_sizes, window=None):
    """A sequence computed alone vs packed among others of ragged lengths at random positions."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    target_len = rng.choice(lens_pool)
    tq, tk, tv = (_rand((target_len, h, d), dtype, device, gen) for h in (hq, hkv, hkv))
    alone = attention_varlen(tq, tk, tv, _cu([target_len], device), window=window)
    for n in batch_sizes:
        lens = [rng.choice(lens_pool) for _ in range(n - 1)]
        where = rng.randrange(n)
        others = _case(lens, hq, hkv, d, dtype, device, rng.randrange(10**6)) if lens else None
        parts = []
        start = sum(lens[:where])
        for x, t in zip((tq, tk, tv), others or (None, None, None)):
            parts.append(x if t is None else torch.cat([t[:start], x, t[start:]]))
        all_lens = lens[:where] + [target_len] + lens[where:]
        out = attention_varlen(*parts, _cu(all_lens, device), window=window)
        assert torch.equal(out[start : start + target_len], alone), f"batch of {n}: sequence at index {where} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_alone_vs_packed(dtype):
    _check_alone_vs_packed([1, 2, 5, 16, 17, 33, 64, 65, 80], 4, 2, 64, dtype, "cpu", 1, [1, 2, 5, 31, 128])


@pytest.mark.parametrize("dtype,hq,hkv,d", [(torch.float32, 4, 4, 64), (torch.bfloat16, 4, 2, 64), (torch.float32, 4, 1, 128)])
def test_cpu_training_prefill_decode_chunked(dtype, hq, hkv, d):
    _check_all_callers([1, 17, 80, 5, 64, 65, 33], hq, hkv, d, dtype, "cpu", seed=hq * 10 + hkv + d)


def test_cpu_many_sequences_prefill_and_chunks():
    rng = random.Random(5)
    lens = [rng.randrange(1, 90) for _ in range(40)]
    _check_all_callers(lens, 4, 2, 64, torch.float32, "cpu", seed=5, decode=False)


@pytest.mark.parametrize("dtype,d,window", [(torch.float32, 96, 7), (torch.bfloat16, 256, 20), (torch.float32, 64, 65),
                                            (torch.bfloat16, 128, 1)])
def test_cpu_window_alone_vs_packed(dtype, d, window):
    _check_alone_vs_packed([1, 2, 5, 16, 17, 33, 64, 65, 80], 2, 1, d, dtype, "cpu", d + window, [1, 2, 5, 31],
                           window=window)


@pytest.mark.parametrize("dtype,hq,hkv,d,window", [(torch.float32, 2, 1, 96, 7), (torch.bfloat16, 2, 2, 256, 20),
                                                   (torch.float32, 4, 2, 64, 65), (torch.bfloat16, 2, 1, 96, None)])
def test_cpu_window_training_prefill_decode_chunked(dtype, hq, hkv, d, window):
    _check_all_callers([1, 17, 80, 5, 64, 65, 33], hq, hkv, d, dtype, "cpu", seed=d, window=window)


def test_triton_interpreter_callers_agree():
    """The Triton kernel's masking/paging logic under TRITON_INTERPRET=1, tiny shapes. The interpreter runs
    tl.dot as numpy matmul, whose bits may depend on a query's row in its tile, so callers agree to within
    rounding here; the bitwise proof is the CUDA test_gpu_training_prefill_decode_chunked."""
    if not torch.cuda.is_available():
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1 on CPU")

    def fwd(q, k, v, cu, sk, bt, offs, bs):
        return attention_forward_triton(q, k, v, cu, sk, bt, offs, bs, 0.125, False)[0]

    def train(q, k, v, cu):
        sk, bt, offs = training_metadata(cu)
        return fwd(q, k, v, cu, sk, bt, offs, TRAINING_BLOCK_SIZE)

    def close(a, b):
        return torch.allclose(a, b, atol=1e-5, rtol=1e-5)

    _check_all_callers([3, 18], 2, 1, 64, torch.float32, "cpu", seed=3, decode=True, fn=fwd, train_fn=train,
                       same=close)


def _triton_callers(window):
    """(engine caller, training caller) running the Triton forward directly (the interpreter on CPU)."""
    def fwd(q, k, v, cu, sk, bt, offs, bs, window=window):
        return attention_forward_triton(q, k, v, cu, sk, bt, offs, bs, 0.125, False, pack=True, window=window)[0]

    def train(q, k, v, cu):
        return attention_forward_triton(q, k, v, cu, *training_metadata(cu), TRAINING_BLOCK_SIZE, 0.125, False,
                                        window=window)[0]
    return fwd, train


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs TRITON_INTERPRET=1 on CPU")
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
@pytest.mark.parametrize("d,window", [(64, 70), (96, 7), (256, 20)])
def test_triton_interpreter_window_callers_bitwise(d, window):
    """With a window, training / prefill / decode / chunked prefill agree bitwise under the interpreter: prefill
    tiles fold key tiles before a row's window masked (exact no-ops) that decode skips. Bitwise here because
    numpy's fp32 matmul gives each row the same bits whatever its tile row at these shapes (checked by this
    test too); the hardware proof: test_gpu_window_training_prefill_decode_chunked."""
    fwd, train = _triton_callers(window)
    _check_all_callers([3, 40], 2, 1, d, torch.float32, "cpu", seed=d, decode=True, fn=fwd, train_fn=train)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs TRITON_INTERPRET=1 on CPU")
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
def test_triton_interpreter_window_across_split_boundary():
    """A 100-key window across the 512-key split boundary: training rows == decode rows (in-kernel fold and
    parallel splits) bitwise. Row 613's training tile starts at 608 (first key 509: split 0), so the training
    kernel folds split 0 -- empty for row 613 -- that decode alone (first key 514: split 1) skips."""
    n, window = 640, 100
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn((n, h, 64), generator=gen) for h in (2, 1, 1))
    fwd, train = _triton_callers(window)
    ref = train(q, k, v, _cu([n], "cpu"))
    rows = [99, 100, 511, 512, 513, 600, 613, 639]
    table = torch.zeros((len(rows), 1), dtype=torch.int32)
    offs, ctx = torch.zeros(len(rows), dtype=torch.int32), torch.tensor([p + 1 for p in rows], dtype=torch.int32)
    meta = (_cu([1] * len(rows), "cpu"), ctx, table, offs, TRAINING_BLOCK_SIZE)
    for splits in (0, 2):
        out = attention_forward_triton(q[rows], k, v, *meta, 0.125, False, pack=True, n_splits=splits,
                                       window=window)[0]
        assert torch.equal(out, ref[rows]), f"decode (n_splits={splits}) differs from training"


# ------------------------------------------------------------------------------------------------- GPU
QWEN3_HEADS = (16, 8, 128)  # Qwen3-0.6B: 16 q heads, 8 kv heads, head_dim 128


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_alone_vs_packed(dtype):
    hq, hkv, d = QWEN3_HEADS
    pool = [1, 2, 15, 16, 17, 63, 64, 65, 200, 511, 1000, 2048]
    _check_alone_vs_packed(pool, hq, hkv, d, dtype, "cuda", 11, [1, 2, 7, 33, 64])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_training_prefill_decode_chunked(dtype):
    hq, hkv, d = QWEN3_HEADS
    rng = random.Random(7)
    lens = [rng.choice([1, 5, 16, 17, 64, 65, 130, 300]) for _ in range(24)] + [700, 2000]
    _check_all_callers(lens, hq, hkv, d, dtype, "cuda", seed=7, decode=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_64_sequences_prefill_and_chunks(dtype):
    hq, hkv, d = QWEN3_HEADS
    rng = random.Random(9)
    lens = [rng.randrange(1, 2049) for _ in range(64)]
    _check_all_callers(lens, hq, hkv, d, dtype, "cuda", seed=9, decode=False)


# head_dim 96 / 256 models: Phi-3-mini (32 q, 32 kv heads), Gemma-3-4B (8 q, 4 kv heads, window 1024)
WINDOW_HEADS = {"d96": (32, 32, 96), "d256": (8, 4, 256), "d128": QWEN3_HEADS}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("heads", ["d96", "d256"])
@pytest.mark.parametrize("window", [None, 512])
def test_gpu_window_alone_vs_packed(dtype, heads, window):
    hq, hkv, d = WINDOW_HEADS[heads]
    pool = [1, 2, 15, 16, 17, 63, 64, 65, 200, 511, 513, 1000, 2048]
    _check_alone_vs_packed(pool, hq, hkv, d, dtype, "cuda", 12, [1, 2, 7, 33], window=window)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("heads,window", [("d96", None), ("d96", 512), ("d256", None), ("d256", 1024),
                                          ("d128", 512)])
def test_gpu_window_training_prefill_decode_chunked(dtype, heads, window):
    """Contexts to 2100, across several 512-key splits and windows; decode batches of 40 sequences down to 1
    run the in-kernel fold while (sequences x kv heads) >= 264 (Phi-3's 32 kv heads: until 8 sequences remain)
    and the parallel splits below (Gemma-3's 4 kv heads: always); test_gpu_window_decode_equals_training
    compares the two schedules directly at every head_dim."""
    hq, hkv, d = WINDOW_HEADS[heads]
    rng = random.Random(13)
    lens = [rng.choice([1, 5, 16, 17, 64, 65, 130, 300, 520]) for _ in range(37)] + [700, 1100, 2100]
    _check_all_callers(lens, hq, hkv, d, dtype, "cuda", seed=13, decode=True, window=window)
