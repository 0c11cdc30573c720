"""Training attention (`attention_varlen`): autograd over the shared forward kernel, Triton backward on CUDA.

Forward: `kernels.attention`'s kernel with packed metadata (`kv_offsets = cu_seqlens[:-1]`,
`block_table[b, j] = j`), so a token's output equals the engine's bitwise; it also writes the fp32 logsumexp.
Backward (CUDA): delta = rowsum(dO * O) in torch, then a dq kernel (one program per (query tile, q head), loop
over key tiles) and a dk/dv kernel (one program per (key tile, kv head), loops over the q heads of its group
and the query tiles) -- no atomics, so run-to-run deterministic. The backward is not batch invariant and need
not be. CPU backward: autograd of `attention_reference` recomputed per sequence. `invariant_mode(False)`: torch's flash
varlen attention (CUDA, bf16/fp16) or causal SDPA per sequence -- never a padded [B, L, L] matrix.
Left out: dropout, sliding windows, a fused (single-kernel) backward.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from onpolicy.kernels._common import check, is_invariant, use_triton
from onpolicy.kernels.attention import (
    BLOCK_K, LOG2E, _OP, _attention_cpu, _attention_triton, _find_seq, _num_warps,
    check_attention_args, training_metadata,
)

BWD_BLOCK_M = 32  # query tile of the backward kernels
BWD_BLOCK_N = 64  # key tile of the backward kernels


@triton.jit
def _rows(ptr, tok, head, stride_t, stride_h, d):
    """Pointers to rows `tok` of head `head`: a [len(tok), HEAD_DIM] block."""
    return ptr + tok[:, None] * stride_t + head * stride_h + d[None, :]


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_ptr, num_seqs, qk_scale_log2, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    b = _find_seq(cu_ptr, pid, num_seqs, BM)
    start = tl.load(cu_ptr + b)
    seq_len = tl.load(cu_ptr + b + 1) - start
    tile_start = (pid - (start // BM + b)) * BM
    if tile_start >= seq_len:
        return
    kv_head = head // GROUP
    d = tl.arange(0, HEAD_DIM)
    rows = tile_start + tl.arange(0, BM)
    row_ok = rows < seq_len
    tok = (start + rows).to(tl.int64)
    q = tl.load(_rows(q_ptr, tok, head, stride_qt, stride_qh, d), mask=row_ok[:, None], other=0.0)
    do = tl.load(_rows(do_ptr, tok, head, stride_dt, stride_dh, d), mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(lse_ptr + tok * n_heads + head, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + tok * n_heads + head, mask=row_ok, other=0.0)
    dq = tl.zeros([BM, HEAD_DIM], tl.float32)
    for j in range(0, tl.cdiv(tl.minimum(tile_start + BM, seq_len), BN)):
        k_pos = j * BN + tl.arange(0, BN)
        k_ok = k_pos < seq_len
        k_tok = (start + k_pos).to(tl.int64)
        kk = tl.load(_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d), mask=k_ok[:, None], other=0.0)
        vv = tl.load(_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d), mask=k_ok[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(kk), input_precision="ieee")
            dp = tl.dot(do, tl.trans(vv), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kk))
            dp = tl.dot(do, tl.trans(vv))
        keep = row_ok[:, None] & k_ok[None, :] & (k_pos[None, :] <= rows[:, None])
        p = tl.where(keep, tl.exp2(s * qk_scale_log2 - lse2[:, None]), 0.0)
        ds = (p * (dp - delta[:, None])).to(kk.dtype)
        if IEEE:
            dq = tl.dot(ds, kk, dq, input_precision="ieee")
        else:
            dq = tl.dot(ds, kk, dq)
    dq = dq * scale
    tl.store(_rows(dq_ptr, tok, head, stride_qt, stride_qh, d), dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_ptr, num_seqs, qk_scale_log2, scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    n_heads = tl.num_programs(1) * GROUP
    b = _find_seq(cu_ptr, pid, num_seqs, BN)
    start = tl.load(cu_ptr + b)
    seq_len = tl.load(cu_ptr + b + 1) - start
    tile_start = (pid - (start // BN + b)) * BN
    if tile_start >= seq_len:
        return
    d = tl.arange(0, HEAD_DIM)
    k_pos = tile_start + tl.arange(0, BN)
    k_ok = k_pos < seq_len
    k_tok = (start + k_pos).to(tl.int64)
    k = tl.load(_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d), mask=k_ok[:, None], other=0.0)
    v = tl.load(_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d), mask=k_ok[:, None], other=0.0)
    dk = tl.zeros([BN, HEAD_DIM], tl.float32)
    dv = tl.zeros([BN, HEAD_DIM], tl.float32)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        for i in range(tile_start // BM, tl.cdiv(seq_len, BM)):
            rows = i * BM + tl.arange(0, BM)
            row_ok = rows < seq_len
            tok = (start + rows).to(tl.int64)
            qq = tl.load(_rows(q_ptr, tok, head, stride_qt, stride_qh, d), mask=row_ok[:, None], other=0.0)
            do = tl.load(_rows(do_ptr, tok, head, stride_dt, stride_dh, d), mask=row_ok[:, None], other=0.0)
            lse2 = tl.load(lse_ptr + tok * n_heads + head, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(delta_ptr + tok * n_heads + head, mask=row_ok, other=0.0)
            if IEEE:
                st = tl.dot(k, tl.trans(qq), input_precision="ieee")
            else:
                st = tl.dot(k, tl.trans(qq))
            keep = k_ok[:, None] & row_ok[None, :] & (k_pos[:, None] <= rows[None, :])
            pt = tl.where(keep, tl.exp2(st * qk_scale_log2 - lse2[None, :]), 0.0)
            if IEEE:
                dv = tl.dot(pt.to(do.dtype), do, dv, input_precision="ieee")
                dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
            else:
                dv = tl.dot(pt.to(do.dtype), do, dv)
                dpt = tl.dot(v, tl.trans(do))
            dst = (pt * (dpt - delta[None, :])).to(qq.dtype)
            if IEEE:
                dk = tl.dot(dst, qq, dk, input_precision="ieee")
            else:
                dk = tl.dot(dst, qq, dk)
    dk = dk * scale
    tl.store(_rows(dk_ptr, k_tok, kv_head, stride_kt, stride_kh, d), dk.to(dk_ptr.dtype.element_ty), mask=k_ok[:, None])
    tl.store(_rows(dv_ptr, k_tok, kv_head, stride_vt, stride_vh, d), dv.to(dv_ptr.dtype.element_ty), mask=k_ok[:, None])


def _attention_backward_triton(q, k, v, out, lse, do, cu_seqlens, scale):
    t, hq, d = q.shape
    hkv = k.shape[1]
    num_seqs = cu_seqlens.shape[0] - 1
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    delta = (do.float() * out.float()).sum(-1).contiguous()  # [T, Hq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if t == 0:
        return dq, dk, dv
    common = dict(GROUP=hq // hkv, HEAD_DIM=d, BM=BWD_BLOCK_M, BN=BWD_BLOCK_N, IEEE=q.dtype == torch.float32,
                  num_warps=_num_warps(d), num_stages=1)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    _attn_bwd_dq_kernel[(t // BWD_BLOCK_M + num_seqs, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, **common)
    _attn_bwd_dkdv_kernel[(t // BWD_BLOCK_N + num_seqs, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, **common)
    return dq, dk, dv


def _recompute_varlen(q, k, v, cu_seqlens, scale):
    """Differentiable fp32 recomputation for the CPU backward: per sequence, outputs concatenated (split
    and cat: slicing or slice writes would copy the whole gradient once per sequence in backward)."""
    group = q.shape[1] // k.shape[1]
    cu = cu_seqlens.tolist()
    lens = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    outs = []
    for n, qb, kb, vb in zip(lens, q.float().split(lens), k.float().split(lens), v.float().split(lens)):
        if n == 0:
            continue
        kb, vb = kb.repeat_interleave(group, dim=1), vb.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qb, kb) * scale
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, vb))
    return torch.cat(outs).to(q.dtype) if outs else q.new_zeros(q.shape)


class _AttentionVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, seqlens_k, table, offsets, scale):
        if use_triton(q, k, v):
            out, lse = _attention_triton(q, k, v, cu_seqlens, seqlens_k, table, offsets, BLOCK_K, scale, True)
        else:
            out, lse = _attention_cpu(q, k, v, cu_seqlens, seqlens_k, table, offsets, BLOCK_K, scale), None
        ctx.save_for_backward(q, k, v, out, lse if lse is not None else out, cu_seqlens)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        if use_triton(q, k, v):
            dq, dk, dv = _attention_backward_triton(q, k, v, out, lse, do, cu_seqlens, ctx.scale)
            return dq, dk, dv, None, None, None, None, None
        with torch.enable_grad():
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            ref = _recompute_varlen(qg, kg, vg, cu_seqlens, ctx.scale)
            dq, dk, dv = torch.autograd.grad(ref, (qg, kg, vg), do)
        return dq, dk, dv, None, None, None, None, None


def _flash_varlen(q, k, v, cu_seqlens, max_len: int, scale: float):
    """torch.nn.attention.varlen.varlen_attn (flash, causal, differentiable) across its torch-version signatures."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    if "scale" in params:
        kwargs["scale"] = scale
    else:
        q = q * (scale * math.sqrt(q.shape[2]))
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


def _attention_varlen_fast(q, k, v, cu_seqlens, scale: float):
    """`invariant_mode(False)`: torch's fast defaults, no padding -- flash varlen on CUDA (bf16/fp16), else
    causal SDPA per sequence (fp32 on the CPU). Not batch invariant; one host sync for the lengths."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[2] <= 256:
        try:
            return _flash_varlen(q, k, v, cu_seqlens, max(lens, default=0), scale)
        except (ImportError, TypeError):  # no varlen API in this torch build (or another signature)
            pass
    work = q.dtype if q.is_cuda else torch.float32
    outs = []
    for qb, kb, vb in zip(q.split(lens), k.split(lens), v.split(lens)):
        qb, kb, vb = (t.to(work).transpose(0, 1)[None] for t in (qb, kb, vb))
        ob = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(ob[0].transpose(0, 1).to(q.dtype))
    return torch.cat(outs) if outs else torch.zeros_like(q)


def attention_varlen(q, k, v, cu_seqlens, scale=None):
    """Causal attention over packed sequences q/k/v [T, H, D], cu_seqlens int32 [B+1]; differentiable."""
    check(isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1
          and cu_seqlens.numel() >= 1, _OP,
          f"cu_seqlens must be a 1-D int32 tensor [B+1], got {getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    check(isinstance(q, torch.Tensor) and q.dim() == 3, _OP, "q must be a 3-D tensor [tokens, heads, head_dim]")
    check(isinstance(k, torch.Tensor) and k.dim() == 3 and k.shape[0] == q.shape[0], _OP,
          f"training k must have as many tokens as q ({q.shape[0]}), got shape {tuple(getattr(k, 'shape', ()))}")
    meta = training_metadata(cu_seqlens, BLOCK_K)  # (seqlens_k, block_table, kv_offsets), built once per call
    check_attention_args(q, k, v, cu_seqlens, *meta, BLOCK_K, scale)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    if not is_invariant():
        return _attention_varlen_fast(q, k, v, cu_seqlens, scale)
    return _AttentionVarlen.apply(q, k, v, cu_seqlens, *meta, scale)
