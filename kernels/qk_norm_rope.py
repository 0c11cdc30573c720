"""q/k RMSNorm (Qwen3's per-head norm) + RoPE + the q/k/v split of the fused qkv projection, in one launch.

`qk_norm_rope(qkv[T, (n_heads + 2 n_kv_heads) * D], positions[T], cache, n_heads, n_kv_heads, q_weight,
k_weight, eps)` -> contiguous q [T, n_heads, D], k, v [T, n_kv_heads, D], bitwise equal to the unfused sequence
`_qk_norm_rope_unfused` (split, `.contiguous()`, `rms_norm` of q and k, `rope` of q and k). Weights None: no
norm (Llama). GPU: one program per (token, head) -- a q or k head runs `_rms_norm_kernel`'s row code (the same
jit helpers, the same one-row [next_pow2(D)] reduction and warps) and `_rope_kernel`'s rotation; a v head is
copied. CPU: the unfused ops themselves (both modes, as every row-wise op). Backward: the unfused ops' own backward
math (inverse rotation, then autograd of `rms_norm_reference`), no recompute of the forward.
Left out: the KV-cache write (attention's), D > 65536, positions bounds checks on CUDA (as `rope`).
"""
from __future__ import annotations

import numbers

import torch

from onpolicy.kernels._common import check, check_same_device, check_tensor, require_triton, tl, triton, use_triton
from onpolicy.kernels.rmsnorm import rms_norm, rms_norm_backward, rms_num_warps
from onpolicy.kernels.rope import _check_rope, rope, rope_reference

if triton is not None:
    from onpolicy.kernels.rmsnorm import rms_rstd, rms_scale
    from onpolicy.kernels.rope import rotate_pair

    @triton.jit
    def _qk_norm_rope_kernel(qkv_ptr, pos_ptr, cache_ptr, qw_ptr, kw_ptr, q_ptr, k_ptr, v_ptr, n_q, n_kv, D,
                             stride_t, eps, HALF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_HALF: tl.constexpr,
                             NORM: tl.constexpr):
        """Program (t, j): head j of token t in the qkv row; q heads, then k heads, then v heads (copied)."""
        t = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1).to(tl.int64)
        src = qkv_ptr + t * stride_t + j * D
        if j >= n_q + n_kv:
            cols = tl.arange(0, BLOCK)
            mask = cols < D
            tl.store(v_ptr + (t * n_kv + j - n_q - n_kv) * D + cols, tl.load(src + cols, mask=mask), mask=mask)
        else:
            if j < n_q:
                w_ptr = qw_ptr
                dst = q_ptr + (t * n_q + j) * D
            else:
                w_ptr = kw_ptr
                dst = k_ptr + (t * n_kv + j - n_q) * D
            d = tl.arange(0, BLOCK_HALF)
            dmask = d < HALF
            x1 = tl.load(src + d, mask=dmask, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF + d, mask=dmask, other=0.0).to(tl.float32)
            if NORM:  # `_rms_norm_kernel` on the full head row, then its elementwise scale on each half
                cols = tl.arange(0, BLOCK)
                x = tl.load(src + cols, mask=cols < D, other=0.0).to(tl.float32)
                rstd = rms_rstd(x, D, eps)
                x1 = rms_scale(x1, rstd, tl.load(w_ptr + d, mask=dmask, other=0.0).to(tl.float32), q_ptr.dtype.element_ty)
                x2 = rms_scale(x2, rstd, tl.load(w_ptr + HALF + d, mask=dmask, other=0.0).to(tl.float32),
                               q_ptr.dtype.element_ty)
            p = tl.load(pos_ptr + t).to(tl.int64)
            cos = tl.load(cache_ptr + p * (2 * HALF) + d, mask=dmask, other=0.0)
            sin = tl.load(cache_ptr + p * (2 * HALF) + HALF + d, mask=dmask, other=0.0)
            y1, y2 = rotate_pair(x1, x2, cos, sin)
            tl.store(dst + d, y1.to(q_ptr.dtype.element_ty), mask=dmask)
            tl.store(dst + HALF + d, y2.to(q_ptr.dtype.element_ty), mask=dmask)


def _empty_heads(qkv, n_q, n_kv, D):
    T = qkv.shape[0]
    return tuple(torch.empty((T, n, D), device=qkv.device, dtype=qkv.dtype) for n in (n_q, n_kv, n_kv))


def _qk_norm_rope_triton(qkv, positions, cache, n_q, n_kv, q_weight, k_weight, eps):
    """One launch over (T, n_q + 2 n_kv) programs; qkv [T, W] with its last dim contiguous."""
    require_triton("qk_norm_rope")
    D = cache.shape[1]
    q, k, v = _empty_heads(qkv, n_q, n_kv, D)
    if qkv.shape[0] == 0:
        return q, k, v
    norm = q_weight is not None
    block = triton.next_power_of_2(D)
    _qk_norm_rope_kernel[(qkv.shape[0], n_q + 2 * n_kv)](
        qkv, positions, cache, q_weight if norm else qkv, k_weight if norm else qkv, q, k, v, n_q, n_kv, D,
        qkv.stride(0), float(eps), HALF=D // 2, BLOCK=block, BLOCK_HALF=triton.next_power_of_2(D // 2),
        NORM=norm, num_warps=rms_num_warps(block))
    return q, k, v


def _qk_norm_rope_unfused(qkv, positions, cache, n_q, n_kv, q_weight, k_weight, eps):
    """The unfused sequence (the reference, the CPU path, and `invariant_mode(False)`'s torch ops)."""
    T, D = qkv.shape[0], cache.shape[1]
    q, k, v = qkv.split([n_q * D, n_kv * D, n_kv * D], dim=-1)
    q = q.reshape(T, n_q, D).contiguous()
    k = k.reshape(T, n_kv, D).contiguous()
    v = v.reshape(T, n_kv, D).contiguous()
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    return rope(q, positions, cache), rope(k, positions, cache), v


class _QKNormRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, q_weight, k_weight, positions, cache, n_q, n_kv, eps):
        ctx.save_for_backward(qkv, q_weight, k_weight, positions, cache)
        ctx.heads, ctx.eps = (n_q, n_kv), eps
        args = (qkv, positions, cache, n_q, n_kv, q_weight, k_weight, eps)
        if use_triton(qkv, positions, cache):
            return _qk_norm_rope_triton(*args)
        with torch.no_grad():
            return _qk_norm_rope_unfused(*args)

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        qkv, q_weight, k_weight, positions, cache = ctx.saved_tensors
        (n_q, n_kv), T, D = ctx.heads, qkv.shape[0], cache.shape[1]
        q_in, k_in, _ = qkv.split([n_q * D, n_kv * D, n_kv * D], dim=-1)

        def head_grad(grad, x, n, weight, needs_w):
            grad = rope_reference(grad, positions, cache, inverse=True)  # `rope`'s backward
            if weight is None:
                return grad.reshape(T, n * D), None
            x2d = x.reshape(T, n, D).contiguous().reshape(-1, D)  # what `rms_norm` saved
            grad_x, grad_w = rms_norm_backward(x2d, weight, ctx.eps, grad.reshape(-1, D), True, needs_w)
            return grad_x.reshape(T, n * D), grad_w

        gq, gqw = head_grad(grad_q, q_in, n_q, q_weight, ctx.needs_input_grad[1])
        gk, gkw = head_grad(grad_k, k_in, n_kv, k_weight, ctx.needs_input_grad[2])
        grad_qkv = torch.cat([gq, gk, grad_v.reshape(T, n_kv * D)], dim=-1) if ctx.needs_input_grad[0] else None
        return grad_qkv, gqw, gkw, None, None, None, None, None


def _check_qk_norm_rope(qkv, positions, cache, n_heads, n_kv_heads, q_weight, k_weight, eps) -> None:
    op = "qk_norm_rope"
    check_tensor(op, "qkv", qkv)
    for name, n in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        check(isinstance(n, numbers.Integral) and n > 0, op, f"{name} must be a positive int, got {n!r}")
    check_tensor(op, "cache", cache, (torch.float32,))
    check(cache.dim() == 2, op, f"cache must be the 2-D table from rope_cache, got shape {tuple(cache.shape)}")
    D = cache.shape[1]
    width = (n_heads + 2 * n_kv_heads) * D
    check(qkv.dim() == 2 and qkv.shape[1] == width and qkv.stride(1) == 1, op,
          f"qkv must be [T, (n_heads + 2 n_kv_heads) * head_dim = {width}] with a contiguous last dim, "
          f"got shape {tuple(qkv.shape)} strides {qkv.stride()}")
    check((q_weight is None) == (k_weight is None), op, "q_weight and k_weight must both be given or both be None")
    _check_rope(qkv[:, :D].reshape(-1, 1, D), positions, cache)
    if q_weight is not None:
        for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
            check_tensor(op, name, w)
            check(w.shape == (D,) and w.dtype == qkv.dtype, op,
                  f"{name} must be [head_dim={D}] of qkv's dtype {qkv.dtype}, got {tuple(w.shape)} {w.dtype}")
        check(isinstance(eps, (int, float)) and eps > 0, op, f"eps must be a positive float, got {eps!r}")
        check_same_device(op, qkv=qkv, q_weight=q_weight, k_weight=k_weight)


def qk_norm_rope(qkv: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, n_heads: int, n_kv_heads: int,
                 q_weight: torch.Tensor | None = None, k_weight: torch.Tensor | None = None, eps: float = 1e-6):
    """(q, k, v) from the fused projection qkv: per-head RMSNorm of q and k (when weights are given), then RoPE
    of q and k by positions[T]; contiguous [T, heads, D]; autograd wrt qkv and the weights."""
    _check_qk_norm_rope(qkv, positions, cache, n_heads, n_kv_heads, q_weight, k_weight, eps)
    args = (positions, cache.contiguous(), n_heads, n_kv_heads)
    if not use_triton(qkv, positions, cache):
        return _qk_norm_rope_unfused(qkv, *args, q_weight, k_weight, eps)
    weights = (None, None) if q_weight is None else (q_weight.contiguous(), k_weight.contiguous())
    return _QKNormRope.apply(qkv, *weights, positions.contiguous(), *args[1:], float(eps))
