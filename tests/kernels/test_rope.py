"""rope/rope_cache vs HF rotary math (forward, backward wrt x), the Triton kernel under the interpreter."""
import pytest
import torch

from onpolicy.kernels.rope import _rope_triton, rope, rope_cache, rope_reference

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2)]


def hf_rope(x, positions, head_dim, theta):
    """transformers' rotary embedding (default rope_type) + apply_rotary_pos_emb, computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    xf = x.float()
    x1, x2 = xf[..., : head_dim // 2], xf[..., head_dim // 2 :]
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def test_rope_cache_matches_hf_formula():
    cache = rope_cache(100, 64, 1_000_000.0, "cpu")
    assert cache.dtype == torch.float32 and cache.shape == (100, 64)
    inv_freq = 1.0 / (1_000_000.0 ** (torch.arange(0, 64, 2, dtype=torch.int64).float() / 64))
    freqs = torch.arange(100).float()[:, None] * inv_freq[None, :]
    assert torch.equal(cache[:, :32], freqs.cos()) and torch.equal(cache[:, 32:], freqs.sin())


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("T,heads,D", [(5, 2, 16), (9, 3, 64), (4, 1, 128)])
def test_rope_forward_backward_vs_hf(dtype, atol, rtol, T, heads, D):
    theta = 10000.0
    cache = rope_cache(512, D, theta, "cpu")
    x = torch.randn(T, heads, D, dtype=dtype)
    pos = torch.randint(0, 512, (T,))
    xi, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = rope(xi, pos, cache)
    ref = hf_rope(xr, pos, D, theta)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(rope_reference(x, pos, cache).float(), ref.float(), atol=atol, rtol=rtol)
    g = torch.randn(T, heads, D, dtype=dtype)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xi.grad.float(), xr.grad.float(), atol=atol, rtol=rtol)


def test_rope_strided_input_and_int32_positions():
    qkv = torch.randn(6, 5, 32)
    q = qkv[:, 1:4]  # strided in T
    pos = torch.arange(6, dtype=torch.int32)
    cache = rope_cache(16, 32, 10000.0)
    torch.testing.assert_close(rope(q, pos, cache), rope_reference(q.contiguous(), pos, cache))


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_triton_rope_interpreter(dtype, atol, rtol):
    cache = rope_cache(64, 32, 10000.0)
    base = torch.randn(5, 4, 32, dtype=dtype)
    x = base[:, 1:4]  # strided heads view
    pos = torch.tensor([0, 7, 63, 2, 9])
    out = _rope_triton(x, pos, cache)
    torch.testing.assert_close(out.float(), rope_reference(x, pos, cache).float(), atol=atol, rtol=rtol)
    assert torch.equal(_rope_triton(x[2:3], pos[2:3], cache)[0], out[2])
