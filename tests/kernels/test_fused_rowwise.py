"""add_rms_norm and qk_norm_rope == the unfused ops they replace, `torch.equal`, forward and backward.

CPU: the public ops (CPU torch paths) and their autograd Functions vs the unfused ops' autograd. Interpreter
(TRITON_INTERPRET=1, tiny shapes): the fused Triton launchers vs the unfused Triton launchers. The interpreter
casts fp32 -> bf16 by truncation (the GPU rounds to nearest even), so `h == residual + x` of torch is checked in
fp32 only there; tests/invariance/test_fused_gpu.py checks every output on the H100.
"""
import pytest
import torch

from onpolicy.kernels import add_rms_norm, invariant_mode, qk_norm_rope, rms_norm, rope, rope_cache
from onpolicy.kernels.qk_norm_rope import _qk_norm_rope_triton, _qk_norm_rope_unfused, _QKNormRope
from onpolicy.kernels.rmsnorm import _add_rms_norm_triton, _AddRMSNorm, _rms_norm_triton
from onpolicy.kernels.rope import _rope_triton

DTYPES = [torch.float32, torch.bfloat16]


def _rows(n, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x, r = (3 * torch.randn(n, H, generator=g)).to(dtype), (3 * torch.randn(n, H, generator=g)).to(dtype)
    return x, r, (1 + 0.3 * torch.randn(H, generator=g)).to(dtype)


def _qkv(T, n_q, n_kv, D, dtype, seed, max_pos=64):
    g = torch.Generator().manual_seed(seed)
    qkv = (2 * torch.randn(T, (n_q + 2 * n_kv) * D, generator=g)).to(dtype)
    qw, kw = ((1 + 0.3 * torch.randn(D, generator=g)).to(dtype) for _ in range(2))
    return qkv, qw, kw, torch.randint(0, max_pos, (T,), generator=g), rope_cache(max_pos, D, 10000.0)


# ------------------------------------------------------------------------------------------- add_rms_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (5, 96), (3, 7, 128), (70, 1000)])
def test_add_rms_norm_equals_add_then_rms_norm(dtype, shape):
    x, r, w = _rows(int(torch.tensor(shape[:-1]).prod()), shape[-1], dtype, seed=len(shape) + shape[-1])
    x, r = x.reshape(shape), r.reshape(shape)
    h, y = add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(h, r + x) and torch.equal(y, rms_norm(r + x, w, 1e-6))
    with invariant_mode(False):  # row-wise ops ignore the mode
        h0, y0 = add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(h0, h) and torch.equal(y0, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_h", [True, False])
def test_add_rms_norm_backward_equals_unfused(dtype, use_h):
    """Gradients wrt x, residual and weight, with h used downstream (a later residual) or not (final norm)."""
    x, r, w = _rows(37, 128, dtype, seed=5)
    g = torch.Generator().manual_seed(6)
    gy, gh = (torch.randn(37, 128, generator=g).to(dtype) for _ in range(2))

    def grads(fused):
        xs, rs, ws = (t.clone().requires_grad_() for t in (x, r, w))
        if fused:
            h, y = _AddRMSNorm.apply(xs, rs, ws, 1e-6)  # the GPU path's Function, run on CPU
        else:
            h = rs + xs
            y = rms_norm(h, ws, 1e-6)
        loss = (y.float() * gy.float()).sum() + ((h.float() * gh.float()).sum() if use_h else 0.0)
        return torch.autograd.grad(loss, (xs, rs, ws))

    for a, b in zip(grads(True), grads(False)):
        assert a.abs().sum() > 0 and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [48, 64, 128])
def test_triton_add_rms_norm_interpreter(dtype, H):
    x, r, w = _rows(6, H, dtype, seed=H)
    h, y = _add_rms_norm_triton(x, r, w, 1e-5)
    assert torch.equal(y, _rms_norm_triton(h, w, 1e-5))  # the same row code on the same h
    if dtype == torch.float32:
        assert torch.equal(h, r + x)
    torch.testing.assert_close(h.float(), (r + x).float(), atol=0.0, rtol=1.6e-2)
    h1, y1 = _add_rms_norm_triton(x[3:4], r[3:4], w, 1e-5)
    assert torch.equal(h1[0], h[3]) and torch.equal(y1[0], y[3])


# ------------------------------------------------------------------------------------------- qk_norm_rope
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("T,n_q,n_kv,D", [(1, 2, 1, 16), (7, 4, 2, 32), (33, 3, 3, 64)])
def test_qk_norm_rope_equals_unfused_cpu(dtype, norm, T, n_q, n_kv, D):
    qkv, qw, kw, pos, cache = _qkv(T, n_q, n_kv, D, dtype, seed=T)
    weights = (qw, kw) if norm else (None, None)
    q, k, v = qk_norm_rope(qkv, pos, cache, n_q, n_kv, *weights, 1e-6)
    qs, ks, vs = qkv.split([n_q * D, n_kv * D, n_kv * D], -1)
    qr, kr = qs.reshape(T, n_q, D), ks.reshape(T, n_kv, D)
    if norm:
        qr, kr = rms_norm(qr, qw, 1e-6), rms_norm(kr, kw, 1e-6)
    assert torch.equal(q, rope(qr, pos, cache)) and torch.equal(k, rope(kr, pos, cache))
    assert torch.equal(v, vs.reshape(T, n_kv, D)) and q.is_contiguous() and k.is_contiguous() and v.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [True, False])
def test_qk_norm_rope_backward_equals_unfused(dtype, norm):
    """The GPU path's autograd Function (run on CPU) gives the unfused ops' gradients bit for bit."""
    T, n_q, n_kv, D = 9, 4, 2, 32
    qkv, qw, kw, pos, cache = _qkv(T, n_q, n_kv, D, dtype, seed=11)
    g = torch.Generator().manual_seed(12)
    outs_grad = [torch.randn(T, n, D, generator=g).to(dtype) for n in (n_q, n_kv, n_kv)]

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in ((qkv, qw, kw) if norm else (qkv,))]
        weights = tuple(leaves[1:]) if norm else (None, None)
        outs = fn(leaves[0], pos, cache, n_q, n_kv, *weights, 1e-6)
        return torch.autograd.grad(outs, leaves, outs_grad)

    fused = grads(lambda qkv_, p, c, nq, nkv, qw_, kw_, eps: _QKNormRope.apply(qkv_, qw_, kw_, p, c, nq, nkv, eps))
    for a, b in zip(fused, grads(_qk_norm_rope_unfused)):
        assert a.abs().sum() > 0 and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("T,n_q,n_kv,D", [(3, 4, 2, 32), (2, 2, 2, 48)])
def test_triton_qk_norm_rope_interpreter(dtype, norm, T, n_q, n_kv, D):
    """Fused launcher == `_rms_norm_triton` then `_rope_triton` (the unfused kernels); D=48: padded block."""
    qkv, qw, kw, pos, cache = _qkv(T, n_q, n_kv, D, dtype, seed=D)
    weights = (qw, kw) if norm else (None, None)
    q, k, v = _qk_norm_rope_triton(qkv, pos, cache, n_q, n_kv, *weights, 1e-6)
    qs, ks, vs = qkv.split([n_q * D, n_kv * D, n_kv * D], -1)
    for out, src, n, w in ((q, qs, n_q, qw), (k, ks, n_kv, kw)):
        x = src.reshape(T * n, D).contiguous()
        if norm:
            x = _rms_norm_triton(x, w, 1e-6)
        assert torch.equal(out, _rope_triton(x.reshape(T, n, D), pos, cache))
    assert torch.equal(v, vs.reshape(T, n_kv, D))
    q1, k1, v1 = _qk_norm_rope_triton(qkv[1:2], pos[1:2], cache, n_q, n_kv, *weights, 1e-6)
    assert torch.equal(q1[0], q[1]) and torch.equal(k1[0], k[1]) and torch.equal(v1[0], v[1])


BAD = [
    ("residual must have x's shape", lambda: add_rms_norm(torch.ones(2, 8), torch.ones(3, 8), torch.ones(8), 1e-6)),
    ("residual has dtype int64", lambda: add_rms_norm(torch.ones(2, 8), torch.ones(2, 8, dtype=torch.long),
                                                        torch.ones(8), 1e-6)),
    ("add_rms_norm: eps must be a positive float", lambda: add_rms_norm(torch.ones(2, 8), torch.ones(2, 8),
                                                                         torch.ones(8), -1.0)),
    ("qkv must be \\[T, \\(n_heads \\+ 2 n_kv_heads\\) \\* head_dim = 32\\]",
     lambda: qk_norm_rope(torch.ones(2, 24), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4), 2, 1)),
    ("n_kv_heads must be a positive int", lambda: qk_norm_rope(torch.ones(2, 16), torch.zeros(2, dtype=torch.long),
                                                                 rope_cache(4, 8, 1e4), 2, 0)),
    ("q_weight and k_weight must both be given", lambda: qk_norm_rope(
        torch.ones(2, 32), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4), 2, 1, torch.ones(8))),
    ("q_weight must be \\[head_dim=8\\]", lambda: qk_norm_rope(
        torch.ones(2, 32), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4), 2, 1, torch.ones(4), torch.ones(4))),
    ("positions must lie in \\[0, 4\\)", lambda: qk_norm_rope(torch.ones(2, 32), torch.tensor([0, 4]),
                                                               rope_cache(4, 8, 1e4), 2, 1)),
    ("cache has dtype bfloat16", lambda: qk_norm_rope(torch.ones(2, 32), torch.zeros(2, dtype=torch.long),
                                                      rope_cache(4, 8, 1e4).bfloat16(), 2, 1)),
]


@pytest.mark.parametrize("match,call", BAD, ids=[m[:30] for m, _ in BAD])
def test_bad_input(match, call):
    with pytest.raises(ValueError, match=match):
        call()
