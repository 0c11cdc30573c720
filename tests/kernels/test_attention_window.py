"""Attention at head_dim 64/96/128/256 and with a sliding window: every path vs `attention_reference` (allclose),
forward and backward; the window's skipped tiles and splits are exact no-ops (bitwise); bad `window` ->
ValueError. CPU path on small shapes, Triton kernels under TRITON_INTERPRET=1 on tiny ones, the H100 at real
sizes (`gpu`). Caller invariance with a window: tests/invariance/test_attention_invariance.py."""
import pytest
import torch

from onpolicy.kernels import attention, attention_reference, attention_varlen, invariant_mode
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, training_metadata
from onpolicy.kernels.attention_bwd_triton import attention_backward_triton
from onpolicy.kernels.attention_triton import attention_forward_triton
from tests.kernels.test_attention import (
    GRAD_TOL, TOL, TRITON_DEVICE, _close, _cu, _packed, _paged_case, needs_triton,
)

CTX, QL = [1, 30, 77, 64, 130], [1, 30, 5, 1, 64]  # decode, prefill, chunk with prefix


def _reference_grads(q, k, v, cu, do, scale, window):
    """fp32 reference forward + autograd (inputs upcast)."""
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    out = attention_reference(*leaves, cu, *training_metadata(cu), TRAINING_BLOCK_SIZE, scale, window=window)
    return (out,) + torch.autograd.grad(out, leaves, do.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 96, 128, 256])
@pytest.mark.parametrize("window", [None, 1, 7, 40])
def test_cpu_paged_window_matches_reference(dtype, d, window):
    (q, k, v), meta = _paged_case(CTX, QL, 4, 2, d, dtype, seed=d)
    out = attention(q, k, v, *meta, window=window)
    assert out.dtype == dtype and torch.isfinite(out).all()
    _close(out, attention_reference(q.float(), k.float(), v.float(), *meta, window=window), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [96, 256])
@pytest.mark.parametrize("window", [None, 1, 20])
def test_cpu_varlen_window_forward_backward(dtype, d, window):
    lens = [1, 17, 70, 3]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, 4, 2, d, dtype, seed=d))
    cu = _cu(lens)
    out = attention_varlen(q, k, v, cu, window=window)
    do = torch.randn(out.shape).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = _reference_grads(q, k, v, cu, do, None, window)
    _close(out, ref[0], TOL[dtype])
    for g, r in zip(grads, ref[1:]):
        assert g.dtype == dtype
        _close(g, r, GRAD_TOL[dtype])


def test_window_reaching_position_zero_keeps_the_bits():
    """A window at least as long as every context gives the bits of no window (CPU forward and backward)."""
    (q, k, v), meta = _paged_case(CTX, QL, 2, 1, 96, torch.float32, seed=1)
    assert torch.equal(attention(q, k, v, *meta, window=130), attention(q, k, v, *meta))
    lens = [5, 70]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, 2, 1, 64, torch.float32, seed=2))
    do = torch.randn(sum(lens), 2, 64)
    full = torch.autograd.grad(attention_varlen(q, k, v, _cu(lens)), (q, k, v), do)
    wide = torch.autograd.grad(attention_varlen(q, k, v, _cu(lens), window=70), (q, k, v), do)
    assert all(torch.equal(a, b) for a, b in zip(full, wide))


def test_window_invariant_mode_false():
    """The comparison stack: the padded reference (engine) and per-sequence SDPA with a band mask (training)."""
    (q, k, v), meta = _paged_case([20, 70], [20, 3], 4, 2, 96, torch.float32)
    with invariant_mode(False):
        got = attention(q, k, v, *meta, window=9)
    assert torch.equal(got, attention_reference(q, k, v, *meta, window=9))
    lens = [1, 17, 40]
    q, k, v = _packed(lens, 4, 2, 256, torch.float32)
    with invariant_mode(False):
        out = attention_varlen(q, k, v, _cu(lens), window=9)
    _close(out, _reference_grads(q, k, v, _cu(lens), torch.zeros_like(q), None, 9)[0], TOL[torch.float32])


@pytest.mark.parametrize("window", [0, -3, 2.0, True, "8"])
def test_bad_window(window):
    (q, k, v), meta = _paged_case([4, 20], [4, 1], 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="window must be None or a positive int"):
        attention(q, k, v, *meta, window=window)
    with pytest.raises(ValueError, match="window must be None or a positive int"):
        attention_varlen(q, k[: q.shape[0]], v[: q.shape[0]], meta[0], window=window)


@pytest.mark.parametrize("d", [80, 192, 512])
def test_bad_head_dim(d):
    q, k, v = _packed([3, 4], 2, 1, d, torch.float32)
    with pytest.raises(ValueError, match=f"head_dim must be one of 64, 96, 128, 256, got {d}"):
        attention_varlen(q, k, v, _cu([3, 4]))


# ---------------------------------------------------------------------- Triton kernels (interpreter on CPU)
@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
@pytest.mark.parametrize("d,window", [(96, None), (96, 5), (256, None), (256, 40), (64, 70)])
def test_triton_window_head_dims_match_reference(d, window):
    """Forward (both packings, both decode schedules), logsumexp and backward vs the reference."""
    (q, k, v), meta = _paged_case(CTX, QL, 2, 1, d, torch.float32, device=TRITON_DEVICE, seed=d)
    ref = attention_reference(q, k, v, *meta, 0.1, window=window)
    for pack, splits in ((False, 0), (True, 0), (True, 1)):
        out, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=pack, n_splits=splits, window=window)
        _close(out, ref, TOL[torch.float32])
    lens = [5, 70, 3]
    q, k, v = _packed(lens, 2, 1, d, torch.float32, device=TRITON_DEVICE, seed=3)
    cu = _cu(lens, TRITON_DEVICE)
    out, lse = attention_forward_triton(q, k, v, cu, *training_metadata(cu), TRAINING_BLOCK_SIZE, 0.1, True,
                                        window=window)
    do = torch.randn(out.shape, device=TRITON_DEVICE)
    ref = _reference_grads(q, k, v, cu, do, 0.1, window)
    _close(out, ref[0], TOL[torch.float32])
    pos = torch.cat([torch.arange(n) for n in lens])
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, dim=1)) * 0.1
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    keep = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
    if window is not None:
        keep &= pos[None, :] > pos[:, None] - window
    _close(lse, torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1).T, TOL[torch.float32])
    grads = attention_backward_triton(q, k, v, out, lse, do, cu, 0.1, window)
    for g, r in zip(grads, ref[1:]):
        _close(g, r, GRAD_TOL[torch.float32])


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")  # rows with no key in a split (numpy only)
@pytest.mark.parametrize("d", [64, 96])
def test_triton_window_parallel_splits_equal_the_in_kernel_fold(d):
    """Windows that start past whole 512-key splits: decode's parallel splits + combine (which starts at the row's
    first split) == the in-kernel fold, bitwise. The q_len-2 chunk at positions 511, 512 with window 1 folds an
    empty split 0 for its second row in the kernel and skips it in the combine: skipping is exact."""
    (q, k, v), meta = _paged_case([1100, 5, 513, 600], [1, 1, 2, 0], 2, 1, d, torch.float32, device=TRITON_DEVICE,
                                  seed=4)
    for window in (1, 100, 600):
        for pack in (False, True):
            folded, _ = attention_forward_triton(q, k, v, *meta, 1 / 8, False, pack=pack, window=window)
            split, _ = attention_forward_triton(q, k, v, *meta, 1 / 8, False, pack=pack, n_splits=3, window=window)
            assert torch.equal(split, folded), (window, pack)
        _close(folded, attention_reference(q, k, v, *meta, 1 / 8, window=window), TOL[torch.float32])


def _check_96_is_padded_128(device):
    """head_dim 96 (run as 128 with masked columns) == head_dim 128 with 32 explicit zero columns: forward
    bitwise (training with lse, paged decode with both schedules), backward to rounding; padded columns stay 0."""
    (q, k, v), meta = _paged_case([600, 70], [1, 1], 2, 1, 96, torch.float32, device=device, seed=9)
    pad = [torch.nn.functional.pad(t, (0, 32)) for t in (q, k, v)]
    for splits in (0, 2):
        narrow, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=True, n_splits=splits, window=100)
        wide, _ = attention_forward_triton(*pad, *meta, 0.1, False, pack=True, n_splits=splits, window=100)
        assert torch.equal(narrow, wide[..., :96]) and not wide[..., 96:].any()
    lens = [70, 5]
    q, k, v = _packed(lens, 2, 1, 96, torch.float32, device=device, seed=10)
    pad = [torch.nn.functional.pad(t, (0, 32)) for t in (q, k, v)]
    cu = _cu(lens, device)
    meta = (cu, *training_metadata(cu), TRAINING_BLOCK_SIZE)
    narrow, lse_n = attention_forward_triton(q, k, v, *meta, 0.1, True, window=20)
    wide, lse_w = attention_forward_triton(*pad, *meta, 0.1, True, window=20)
    assert torch.equal(narrow, wide[..., :96]) and torch.equal(lse_n, lse_w)
    do = torch.randn(narrow.shape, device=device)
    g_n = attention_backward_triton(q, k, v, narrow, lse_n, do, cu, 0.1, 20)
    g_w = attention_backward_triton(*pad, wide, lse_w, torch.nn.functional.pad(do, (0, 32)), cu, 0.1, 20)
    for a, b in zip(g_n, g_w):  # close, not equal: torch's rowsum(dO * O) may add 96 and 128 columns differently
        torch.testing.assert_close(a, b[..., :96], atol=1e-6, rtol=1e-6)
        assert not b[..., 96:].any()


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
def test_triton_head_dim_96_is_128_with_zero_columns():
    _check_96_is_padded_128(TRITON_DEVICE)


# ------------------------------------------------------------------------------------------------------ GPU
GEMMA3_4B = (8, 4, 256)  # q heads, kv heads, head_dim; sliding window 1024
PHI3_MINI = (32, 32, 96)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [GEMMA3_4B, PHI3_MINI], ids=["d256", "d96"])
@pytest.mark.parametrize("window", [None, 512, 1024])
def test_gpu_window_head_dims_match_reference(dtype, heads, window):
    hq, hkv, d = heads
    ctx, ql = [1, 300, 77, 64, 1030, 2048], [1, 300, 5, 1, 64, 17]
    (q, k, v), meta = _paged_case(ctx, ql, hq, hkv, d, dtype, device="cuda", seed=d)
    out = attention(q, k, v, *meta, window=window)
    assert torch.isfinite(out).all()
    _close(out, attention_reference(q.float(), k.float(), v.float(), *meta, window=window), TOL[dtype])
    lens = [1, 17, 64, 1300, 3, 129]
    q, k, v = (t.requires_grad_(True) for t in _packed(lens, hq, hkv, d, dtype, device="cuda", seed=1))
    cu = _cu(lens, "cuda")
    out = attention_varlen(q, k, v, cu, window=window)
    do = torch.randn(out.shape, device="cuda").to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = _reference_grads(q, k, v, cu, do, None, window)
    _close(out, ref[0], TOL[dtype])
    for g, r in zip(grads, ref[1:]):
        _close(g, r, GRAD_TOL[dtype])
    again = torch.autograd.grad(attention_varlen(q, k, v, cu, window=window), (q, k, v), do)
    assert all(torch.equal(a, b) for a, b in zip(grads, again)), "backward not deterministic run to run"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("heads", [GEMMA3_4B, PHI3_MINI, (16, 8, 128)], ids=["d256", "d96", "d128"])
@pytest.mark.parametrize("window", [512, 1024, 4096])
def test_gpu_window_decode_equals_training(dtype, heads, window):
    """Decode at contexts up to 8192 with a window: parallel splits + combine == in-kernel fold (both packings)
    == `attention` == the training forward's row at that position, bitwise."""
    hq, hkv, d = heads
    ctx = [1, 511, 512, 513, 1500, 4096, 4097, 8192]
    (q, k, v), meta = _paged_case(ctx, [1] * len(ctx), hq, hkv, d, dtype, device="cuda", seed=6)
    folded, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=True, window=window)
    for pack in (True, False):
        split, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=pack, n_splits=16, window=window)
        assert torch.equal(split, folded)
    assert torch.equal(attention_forward_triton(q, k, v, *meta, 0.1, False, window=window)[0], folded)
    assert torch.equal(attention(q, k, v, *meta, scale=0.1, window=window), folded)
    _close(folded, attention_reference(q.float(), k.float(), v.float(), *meta, 0.1, window=window), TOL[dtype])
    slots = [meta[2][b, torch.arange(n, device="cuda") // 16].long() * 16 + torch.arange(n, device="cuda") % 16
             for b, n in enumerate(ctx)]
    kt, vt = torch.cat([k[s] for s in slots]), torch.cat([v[s] for s in slots])
    qt = torch.zeros((sum(ctx), hq, d), device="cuda", dtype=dtype)
    last = torch.tensor(ctx, device="cuda").cumsum(0) - 1
    qt[last] = q
    train = attention_varlen(qt, kt, vt, _cu(ctx, "cuda"), scale=0.1, window=window)
    assert torch.equal(train[last], folded)


@pytest.mark.gpu
def test_gpu_head_dim_96_is_128_with_zero_columns():
    _check_96_is_padded_128("cuda")
