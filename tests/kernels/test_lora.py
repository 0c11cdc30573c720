"""kernels.lora_shrink (x @ a.T for a thin a) and kernels.lora_expand_add (y + s * t_j @ b_j.T per column block):
vs torch references, forward and backward (fp32, bf16); a row alone == inside batches (torch.equal); the Triton
kernels under the interpreter (the TMA shrink in fp16: split-K pieces at one row == whole-K programs at many
rows; the expand kernel in fp32 and fp16); the same on CUDA (gpu)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from onpolicy import kernels

lora = importlib.import_module("onpolicy.kernels.lora")
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_shrink_matches_reference_forward_and_backward(dtype, tol):
    x = torch.randn(37, 96).to(dtype).requires_grad_(True)
    a = (torch.randn(24, 96) / 96**0.5).to(dtype).requires_grad_(True)
    out = kernels.lora_shrink(x, a)
    w = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * w).sum().backward()
    xr, ar = x.detach().float().requires_grad_(True), a.detach().float().requires_grad_(True)
    ref = F.linear(xr, ar)
    (ref * w).sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(a.grad.float(), ar.grad, atol=5 * tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shrink_batch_invariant_cpu(dtype):
    x, a = torch.randn(130, 160).to(dtype), torch.randn(40, 160).to(dtype)
    rows = {i: kernels.lora_shrink(x[i:i + 1], a) for i in (0, 64, 129)}
    for m in (1, 65, 130):
        out = kernels.lora_shrink(x[:m], a)
        assert all(torch.equal(out[i:i + 1], r) for i, r in rows.items() if i < m)


def test_shrink_checks_and_reference_mode():
    with pytest.raises(ValueError, match="kernels.lora_shrink: x .* and a .* must share K"):
        kernels.lora_shrink(torch.randn(3, 8), torch.randn(2, 9))
    x, a = torch.randn(5, 8), torch.randn(2, 8)
    with kernels.invariant_mode(False):
        assert torch.equal(kernels.lora_shrink(x, a), F.linear(x, a))


def test_shrink_config_depends_on_k_and_r_only():
    assert lora.shrink_config(4096, 96)["BLOCK_N"] == 128 and lora.shrink_config(4096, 32)["BLOCK_N"] == 32
    assert lora.shrink_config(4096, 96)["PIECE_K"] == 256 and lora.shrink_config(128, 8)["PIECE_K"] == 128
    assert lora.shrink_config(12288, 1000)["BLOCK_N"] == 256


@pytest.mark.parametrize("K,R", [(512, 24), (320, 48)])
def test_shrink_tma_interpreter_split_equals_whole_k(K, R):
    """fp16 (bf16 dots are garbage under the interpreter): 1 row runs one program per K piece plus the ordered
    piece sum (4 'SMs' on CPU), 300 rows run whole-K programs; every row comes out bitwise equal."""
    cfg = lora.shrink_config(K, R)
    x, a = torch.randn(300, K).half(), (torch.randn(R, K) / K**0.5).half()
    full = lora._linear_tma(x, a, None, cfg)
    torch.testing.assert_close(full.float(), x.float() @ a.float().t(), atol=2e-3, rtol=2e-3)
    for i in (0, 129, 299):
        assert torch.equal(lora._linear_tma(x[i:i + 1], a, None, cfg), full[i:i + 1])


@pytest.mark.gpu
@pytest.mark.parametrize("K,R", [(4096, 96), (4096, 64), (12288, 32), (4096, 8)])
def test_shrink_cuda_bf16_invariant_and_close(K, R):
    """Qwen3-8B's adapter shapes (r = 32 stacked x3 / x2 / x1; r = 8) on the H100: the TMA path is taken, rows
    alone equal rows in batches of 7 to 4096 (split and whole-K schedules), and the values match fp32."""
    torch.manual_seed(0)
    x = torch.randn(4096, K, device="cuda").bfloat16()
    a = (torch.randn(R, K, device="cuda") / K**0.5).bfloat16()
    assert lora._tma_ok(x, a)
    full = kernels.lora_shrink(x, a)
    torch.testing.assert_close(full.float(), x.float() @ a.float().t(), atol=2e-2, rtol=2e-2)
    for m in (1, 7, 128, 1000, 4096):
        out = kernels.lora_shrink(x[:m], a)
        for i in (0, m // 2, m - 1):
            assert torch.equal(out[i:i + 1], full[i:i + 1]), (m, i)


QKV = ((0, 64, 0, 0), (64, 32, -1, 0), (96, 32, 8, 64))  # q and v adapted (r = 8), k copied


def _expand_inputs(dtype, m=37, blocks=QKV, r=8):
    g = torch.Generator().manual_seed(0)
    n = sum(blk[1] for blk in blocks)
    rows = sum(blk[1] for blk in blocks if blk[2] >= 0)
    t_cols = max(blk[2] for blk in blocks) + r
    y = torch.randn(m, n, generator=g).to(dtype)
    t = torch.randn(m, t_cols, generator=g).to(dtype)
    b = (torch.randn(rows, r, generator=g) * 0.3).to(dtype)
    return y, t, b


def _expand_ref(y, t, b, blocks, scale):
    out = y.clone()
    for start, rows, t_off, b_off in blocks:
        if t_off >= 0:
            out[:, start:start + rows] = out[:, start:start + rows] + scale * t[:, t_off:t_off + 8] @ b[b_off:b_off + rows].t()
    return out


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_expand_add_matches_reference_forward_and_backward(dtype, tol):
    y, t, b = (v.requires_grad_(True) for v in _expand_inputs(dtype))
    out = kernels.lora_expand_add(y, t, b, QKV, 2.0)
    w = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * w).sum().backward()
    yr, tr, br = (v.detach().float().requires_grad_(True) for v in (y, t, b))
    ref = _expand_ref(yr, tr, br, QKV, 2.0)
    (ref * w).sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    assert torch.equal(out[:, 64:96], y[:, 64:96])  # the untargeted block is copied
    for got, want in ((y.grad, yr.grad), (t.grad, tr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(got.float(), want, atol=5 * tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expand_add_batch_invariant_cpu(dtype):
    y, t, b = _expand_inputs(dtype, m=130)
    rows = {i: kernels.lora_expand_add(y[i:i + 1], t[i:i + 1], b, QKV, 0.5) for i in (0, 64, 129)}
    for m in (1, 65, 130):
        out = kernels.lora_expand_add(y[:m], t[:m], b, QKV, 0.5)
        assert all(torch.equal(out[i:i + 1], row) for i, row in rows.items() if i < m)


def test_expand_add_checks_and_block_n():
    y, t, b = _expand_inputs(torch.float32)
    with pytest.raises(ValueError, match="kernels.lora_expand_add: blocks must tile"):
        kernels.lora_expand_add(y, t, b, ((0, 64, 0, 0), (70, 58, 8, 64)), 1.0)
    assert lora.expand_block_n(QKV) == 32 and lora.expand_block_n(((0, 4096, 0, 0), (4096, 1024, 32, 4096))) == 128
    assert lora.expand_block_n(((0, 40, 0, 0), (40, 8, 8, 40))) == 0  # no tile >= 16 divides 40: composed ops


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_expand_kernel_interpreter(dtype, tol):
    """The Triton kernel on CPU tensors (interpreter): close to the composed form; a row alone == in a batch."""
    y, t, b = _expand_inputs(dtype, m=150)
    bn = lora.expand_block_n(QKV)
    out = lora._expand_triton(y, t, b, QKV, 2.0, bn)
    torch.testing.assert_close(out.float(), _expand_ref(y.float(), t.float(), b.float(), QKV, 2.0), atol=tol, rtol=tol)
    assert torch.equal(out[:, 64:96], y[:, 64:96])
    for i in (0, 77, 149):
        assert torch.equal(lora._expand_triton(y[i:i + 1], t[i:i + 1], b, QKV, 2.0, bn), out[i:i + 1])


@pytest.mark.gpu
@pytest.mark.parametrize("blocks", [((0, 4096, 0, 0), (4096, 1024, 32, 4096), (5120, 1024, 64, 5120)),
                                    ((0, 4096, 0, 0), (4096, 1024, -1, 0), (5120, 1024, 32, 4096)),
                                    ((0, 4096, 0, 0),), ((0, 40, 0, 0), (40, 8, -1, 0))])
def test_expand_add_cuda_bf16_invariant_and_close(blocks):
    """Qwen3-8B's qkv (all and q/v adapted), an unfused projection, and a layout the kernel cannot tile (the
    composed path): rows alone == rows in batches of 7 to 4096 on the H100, values close to fp32."""
    torch.manual_seed(0)
    n = sum(blk[1] for blk in blocks)
    rows = sum(blk[1] for blk in blocks if blk[2] >= 0)
    t_cols = max(blk[2] for blk in blocks) + 32
    y = torch.randn(4096, n, device="cuda").bfloat16()
    t = torch.randn(4096, t_cols, device="cuda").bfloat16()
    b = (torch.randn(rows, 32, device="cuda") * 0.1).bfloat16()
    full = kernels.lora_expand_add(y, t, b, blocks, 2.0)
    ref = y.float().clone()
    for start, rows_j, t_off, b_off in blocks:
        if t_off >= 0:
            ref[:, start:start + rows_j] += 2.0 * t[:, t_off:t_off + 32].float() @ b[b_off:b_off + rows_j].float().t()
    torch.testing.assert_close(full.float(), ref, atol=3e-2, rtol=2e-2)
    for m in (1, 7, 128, 1000, 4096):
        out = kernels.lora_expand_add(y[:m], t[:m], b, blocks, 2.0)
        for i in (0, m // 2, m - 1):
            assert torch.equal(out[i:i + 1], full[i:i + 1]), (m, i)
