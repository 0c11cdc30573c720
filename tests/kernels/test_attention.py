"""attention / attention_varlen vs attention_reference (allclose), forward and backward; Triton kernels under
TRITON_INTERPRET=1 on tiny shapes; bad input -> ValueError. Bitwise invariance lives in
tests/invariance/test_attention_invariance.py."""
import math
import os
import random

import pytest
import torch

from onpolicy.kernels import attention, attention_reference, attention_varlen, invariant_mode
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, check_attention_metadata, training_metadata
from onpolicy.kernels.attention_bwd_triton import attention_backward_triton
from onpolicy.kernels.attention_triton import attention_forward_triton

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
GRAD_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-3), torch.bfloat16: dict(atol=1e-1, rtol=5e-2)}


def _cu(lens, device="cpu"):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def _paged_case(ctx_lens, q_lens, hq, hkv, d, dtype, device="cpu", block_size=16, seed=0):
    """Random paged cache (shuffled blocks, NaN in unused slots) + queries = the last q_lens positions."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in ctx_lens]
    num_blocks = sum(need) + 2
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    table = torch.zeros((len(ctx_lens), max(need) + 1), dtype=torch.int32)
    pos = 0
    for b, n in enumerate(need):
        table[b, :n] = torch.tensor(ids[pos : pos + n], dtype=torch.int32)
        pos += n
    k = torch.full((num_blocks * block_size, hkv, d), float("nan"))
    v = torch.full_like(k, float("nan"))
    for b, n in enumerate(ctx_lens):
        p = torch.arange(n)
        slots = table[b, p // block_size].long() * block_size + p % block_size
        k[slots] = torch.randn((n, hkv, d), generator=gen)
        v[slots] = torch.randn((n, hkv, d), generator=gen)
    q = torch.randn((sum(q_lens), hq, d), generator=gen)
    to = dict(device=device)
    meta = (_cu(q_lens, device), torch.tensor(ctx_lens, dtype=torch.int32, **to), table.to(device),
            torch.zeros(len(ctx_lens), dtype=torch.int32, **to), block_size)
    return (q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)), meta


def _packed(lens, hq, hkv, d, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = sum(lens)
    return [torch.randn((t, h, d), generator=gen).to(device=device, dtype=dtype) for h in (hq, hkv, hkv)]


def _reference_grads(q, k, v, cu, do, scale=None):
    """fp32 reference forward + autograd (inputs upcast), for comparing both dtypes."""
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    sk, bt, offs = training_metadata(cu)
    out = attention_reference(*leaves, cu, sk, bt, offs, TRAINING_BLOCK_SIZE, scale)
    return (out,) + torch.autograd.grad(out, leaves, do.float())


def _close(a, b, tol):
    torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_attention_paged_matches_reference(dtype, d, group):
    ctx, ql = [1, 30, 77, 64, 130], [1, 30, 5, 1, 64]  # decode, prefill, chunk with prefix
    (q, k, v), meta = _paged_case(ctx, ql, 4, 4 // group, d, dtype, seed=d + group)
    out = attention(q, k, v, *meta)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    ref = attention_reference(q.float(), k.float(), v.float(), *meta)
    _close(out, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_attention_varlen_forward_backward_matches_reference(dtype, d, group):
    lens = [1, 17, 64, 70, 3]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, 4, 4 // group, d, dtype, seed=group))
    cu = _cu(lens)
    out = attention_varlen(q, k, v, cu)
    do = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = _reference_grads(q, k, v, cu, do)
    _close(out, ref[0], TOL[dtype])
    for name, g, r in zip("qkv", grads, ref[1:]):
        assert g.dtype == dtype, name
        _close(g, r, GRAD_TOL[dtype])


def test_custom_scale_and_strided_qkv():
    """q/k/v as views of one fused projection (strided tokens) and an explicit scale."""
    lens, hq, hkv, d = [9, 40], 4, 2, 64
    fused = torch.randn(sum(lens), (hq + 2 * hkv) * d).view(sum(lens), hq + 2 * hkv, d)
    q, k, v = fused[:, :hq], fused[:, hq : hq + hkv], fused[:, hq + hkv :]
    cu = _cu(lens)
    out = attention_varlen(q, k, v, cu, scale=0.3)
    ref = _reference_grads(q, k, v, cu, torch.zeros_like(q), scale=0.3)[0]
    _close(out, ref, TOL[torch.float32])
    assert torch.equal(out, attention_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu, scale=0.3))


def test_invariant_mode_false_runs_reference():
    (q, k, v), meta = _paged_case([20, 70], [20, 3], 4, 2, 64, torch.float32)
    with invariant_mode(False):
        got = attention(q, k, v, *meta)
    assert torch.equal(got, attention_reference(q, k, v, *meta))
    assert not torch.equal(attention(q, k, v, *meta), got)  # the invariant path is a different kernel


def test_empty_queries_and_zero_length_sequences():
    (q, k, v), meta = _paged_case([5, 9], [0, 2], 2, 2, 64, torch.float32)
    out = attention(q, k, v, *meta)
    torch.testing.assert_close(out, attention_reference(q, k, v, *meta), **TOL[torch.float32])
    lens = [3, 0, 4]
    q, k, v = _packed(lens, 2, 2, 64, torch.float32)
    out = attention_varlen(q, k, v, _cu(lens))
    torch.testing.assert_close(out, _reference_grads(q, k, v, _cu(lens), torch.zeros_like(q))[0], **TOL[torch.float32])


def test_backward_is_deterministic_cpu():
    lens = [33, 12]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, 4, 2, 64, torch.float32))
    do = torch.randn(sum(lens), 4, 64)
    g1 = torch.autograd.grad(attention_varlen(q, k, v, _cu(lens)), (q, k, v), do)
    g2 = torch.autograd.grad(attention_varlen(q, k, v, _cu(lens)), (q, k, v), do)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---------------------------------------------------------------------- Triton kernels (interpreter on CPU)
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1")
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@needs_triton
def test_triton_forward_paged_and_lse():
    (q, k, v), meta = _paged_case([3, 70], [3, 2], 2, 1, 64, torch.float32, device=TRITON_DEVICE, seed=1)
    scale = 1 / 8
    out, lse = attention_forward_triton(q, k, v, *meta, scale, True)
    _close(out, attention_reference(q, k, v, *meta, scale), TOL[torch.float32])
    want = []  # logsumexp of the scaled, causally masked scores
    cu, ctx = meta[0].tolist(), meta[1].tolist()
    for b in range(2):
        for i in range(cu[b], cu[b + 1]):
            n = ctx[b] - (cu[b + 1] - i) + 1
            p = torch.arange(n, device=q.device)
            slots = meta[2][b, p // 16].long() * 16 + p % 16
            want.append(torch.logsumexp(torch.einsum("hd,khd->hk", q[i], k[slots]) * scale, -1))
    _close(lse, torch.stack(want), TOL[torch.float32])


@needs_triton
def test_triton_backward_matches_reference():
    lens = [5, 70]
    q, k, v = _packed(lens, 4, 2, 64, torch.float32, device=TRITON_DEVICE, seed=2)
    cu = _cu(lens, TRITON_DEVICE)
    sk, bt, offs = training_metadata(cu)
    out, lse = attention_forward_triton(q, k, v, cu, sk, bt, offs, TRAINING_BLOCK_SIZE, 1 / 8, True)
    do = torch.randn(out.shape, device=TRITON_DEVICE)
    grads = attention_backward_triton(q, k, v, out, lse, do, cu, 1 / 8)
    ref = _reference_grads(q, k, v, cu, do)
    _close(out, ref[0], TOL[torch.float32])
    for g, r in zip(grads, ref[1:]):
        _close(g, r, GRAD_TOL[torch.float32])


# ------------------------------------------------------------------------------------------------ bad input
def _good():
    (q, k, v), meta = _paged_case([4, 20], [4, 1], 4, 2, 64, torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens_q=meta[0], seqlens_k=meta[1], block_table=meta[2], kv_offsets=meta[3], block_size=meta[4])


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(q=a["q"].double()), "q has dtype float64"),
    (lambda a: a.update(k=a["k"].bfloat16()), "share a dtype"),
    (lambda a: a.update(q=a["q"][:, :3]), "multiple of kv heads"),
    (lambda a: a.update(q=a["q"][..., :32], k=a["k"][..., :32], v=a["v"][..., :32]),
     "head_dim must be one of 64, 96, 128, 256, got 32"),
    (lambda a: a.update(v=a["v"][:-1]), "k and v must have one shape"),
    (lambda a: a.update(q=a["q"][0]), "q must be 3-D"),
    (lambda a: a.update(block_table=a["block_table"][:1]), "block_table must have shape"),
    (lambda a: a.update(seqlens_k=a["seqlens_k"].long()), "seqlens_k has dtype int64; allowed: int32"),
    (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"][:-1]), "cu_seqlens_q must have shape"),
    (lambda a: a.update(kv_offsets=a["kv_offsets"][:1]), "kv_offsets must have shape"),
    (lambda a: a.update(block_size=0), "block_size must be a positive int"),
    (lambda a: a.update(k=a["k"].to("meta"), v=a["v"].to("meta")), "one device"),
])
def test_attention_bad_input(change, match):
    args = _good()
    change(args)
    with pytest.raises(ValueError, match=match):
        attention(**args)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(block_table=a["block_table"][:, :1]), "block_table too short"),
    (lambda a: a.update(seqlens_k=torch.tensor([3, 20], dtype=torch.int32)), "must be <= its seqlens_k"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 4, 6], dtype=torch.int32)), "end at q.shape"),
    (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 4], dtype=torch.int32)), "metadata shapes"),
])
def test_attention_metadata_bad_values(change, match):
    """Value checks run once where metadata is built (check_attention_metadata), not in every kernel call."""
    args = _good()
    change(args)
    with pytest.raises(ValueError, match=match):
        check_attention_metadata(args["cu_seqlens_q"], args["seqlens_k"], args["block_table"], args["block_size"],
                                 args["q"].shape[0])


def test_good_metadata_passes_and_training_metadata_needs_no_table():
    args = _good()
    check_attention_metadata(args["cu_seqlens_q"], args["seqlens_k"], args["block_table"], args["block_size"],
                             args["q"].shape[0])
    cu = _cu([3, 200, 1])
    sk, bt, offs = training_metadata(cu)
    assert sk.tolist() == [3, 200, 1] and offs.tolist() == [0, 3, 203] and bt.shape == (3, 1)
    assert check_attention_metadata(cu, sk, bt, TRAINING_BLOCK_SIZE, 204) == 200  # the kernels' max_keys hint


def test_attention_varlen_bad_input():
    q, k, v = _packed([3, 4], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens has dtype int64; allowed: int32"):
        attention_varlen(q, k, v, _cu([3, 4]).long())
    with pytest.raises(ValueError, match="as many tokens as q"):
        attention_varlen(q, k[:5], v[:5], _cu([3, 4]))
    with pytest.raises(ValueError, match="scale must be None or a positive float"):
        attention_varlen(q, k, v, _cu([3, 4]), scale=-1.0)


# ------------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_gpu_attention_paged_matches_reference(dtype, d, group):
    ctx, ql = [1, 300, 77, 64, 1030, 2048], [1, 300, 5, 1, 64, 17]
    (q, k, v), meta = _paged_case(ctx, ql, 16, 16 // group, d, dtype, device="cuda", seed=d + group)
    out = attention(q, k, v, *meta)
    assert torch.isfinite(out).all()
    _close(out, attention_reference(q.float(), k.float(), v.float(), *meta), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_gpu_attention_varlen_forward_backward(dtype, d, group):
    lens = [1, 17, 64, 700, 3, 129]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, 16, 16 // group, d, dtype, device="cuda", seed=group))
    cu = _cu(lens, "cuda")
    out = attention_varlen(q, k, v, cu)
    do = torch.randn(out.shape, device="cuda").to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = _reference_grads(q, k, v, cu, do)
    _close(out, ref[0], TOL[dtype])
    for g, r in zip(grads, ref[1:]):
        _close(g, r, GRAD_TOL[dtype])
    again = torch.autograd.grad(attention_varlen(q, k, v, cu), (q, k, v), do)
    assert all(torch.equal(a, b) for a, b in zip(grads, again)), "backward not deterministic run to run"


@pytest.mark.gpu
def test_gpu_strided_qkv_and_scale():
    lens, hq, hkv, d = [9, 400], 16, 8, 128
    fused = torch.randn(sum(lens), (hq + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16).view(sum(lens), -1, d)
    q, k, v = fused[:, :hq], fused[:, hq : hq + hkv], fused[:, hq + hkv :]
    out = attention_varlen(q, k, v, _cu(lens, "cuda"), scale=0.05)
    assert torch.equal(out, attention_varlen(q.contiguous(), k.contiguous(), v.contiguous(), _cu(lens, "cuda"), scale=0.05))
    ref = _reference_grads(q, k, v, _cu(lens, "cuda"), torch.zeros_like(q), scale=0.05)[0]
    _close(out, ref, TOL[torch.bfloat16])
    assert math.isfinite(float(out.float().abs().sum()))


@pytest.mark.gpu
def test_gpu_decode_in_cuda_graph_matches_eager():
    """The engine captures decode in CUDA graphs: no host sync inside `attention` while capturing."""
    ctx = [5, 64, 65, 1000]
    (q, k, v), meta = _paged_case(ctx, [1] * len(ctx), 16, 8, 128, torch.bfloat16, device="cuda", seed=4)
    eager = attention(q, k, v, *meta)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        attention(q, k, v, *meta)  # warm-up (compile) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attention(q, k, v, *meta)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
