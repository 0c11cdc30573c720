"""Triton backward of `kernels.attention_varlen` (packed training q/k/v, causal): delta = rowsum(dO * O) in torch,
then a dq kernel (one program per (query tile, q head), loop over key tiles) and a dk/dv kernel (one program per
(key tile, kv head), loops over the q heads of its group and the query tiles). Tiles that lie wholly inside the
causal triangle and the sequence skip the masks. No atomics, so run-to-run deterministic; not batch invariant
(the trainer needs the same gradients run to run, not per batch). Left out: dropout, a fused single-kernel backward.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import LOG2E, require_triton, tl, triton

# (query rows, key rows, warps, stages) of both kernels, per dtype. bf16: measured best of 7 configs on the H100
# (2x the old 32-row tile); fp32 keeps the old tile, as the forward does (`FWD_TILE`).
BWD_TILE = {torch.bfloat16: (64, 64, 4, 1), torch.float32: (32, 64, 8, 1)}


if triton is not None:
    from onpolicy.kernels._common import dot
    from onpolicy.kernels.attention_triton import _seq_tile

    _LOG2E = tl.constexpr(LOG2E)

    @triton.jit
    def _tile_rows(start, length, tile_start, BLOCK: tl.constexpr):
        """Positions of a tile's BLOCK rows within their sequence, which of them exist, and their token ids."""
        pos = tile_start + tl.arange(0, BLOCK)
        return pos, pos < length, (start + pos).to(tl.int64)

    @triton.jit
    def _rows(ptr, tok, head, stride_t, stride_h, d):
        """Pointers to rows `tok` of head `head`: a [len(tok), HEAD_DIM] block."""
        return ptr + tok[:, None] * stride_t + head * stride_h + d[None, :]

    @triton.jit
    def _load_rows(ptr, tok, head, stride_t, stride_h, d, ok, MASKED: tl.constexpr):
        """The [len(tok), HEAD_DIM] block of rows `tok` of head `head`; MASKED: rows where `ok` is False load as 0."""
        if MASKED:
            return tl.load(_rows(ptr, tok, head, stride_t, stride_h, d), mask=ok[:, None], other=0.0)
        return tl.load(_rows(ptr, tok, head, stride_t, stride_h, d))

    @triton.jit
    def _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, ok, MASKED: tl.constexpr):
        """(lse * log2(e), delta) of rows `tok` of head `head`; MASKED: rows where `ok` is False load as 0."""
        if MASKED:
            lse = tl.load(lse_ptr + tok * n_heads + head, mask=ok, other=0.0)
            return lse * _LOG2E, tl.load(delta_ptr + tok * n_heads + head, mask=ok, other=0.0)
        return tl.load(lse_ptr + tok * n_heads + head) * _LOG2E, tl.load(delta_ptr + tok * n_heads + head)

    @triton.jit
    def _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, qk_scale_log2,
                 stride_kt, stride_kh, stride_vt, stride_vh, d, BN: tl.constexpr, MASKED: tl.constexpr,
                 IEEE: tl.constexpr):
        """dq += dS @ K over key tile j (MASKED=False: every key valid and at or below every row)."""
        k_pos, k_ok, k_tok = _tile_rows(start, seq_len, j * BN, BN)
        kk = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok, MASKED)
        vv = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok, MASKED)
        s = dot(q, tl.trans(kk), None, IEEE)
        dp = dot(do, tl.trans(vv), None, IEEE)
        p = tl.exp2(s * qk_scale_log2 - lse2[:, None])
        if MASKED:
            p = tl.where(k_ok[None, :] & (k_pos[None, :] <= rows[:, None]), p, 0.0)
        ds = (p * (dp - delta[:, None])).to(kk.dtype)
        return dot(ds, kk, dq, IEEE)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_ptr, num_seqs, qk_scale_log2, scale,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
    ):
        head = tl.program_id(1)
        n_heads = tl.num_programs(1)
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, tl.program_id(0), num_seqs, BM)
        if tile_start >= seq_len:
            return
        kv_head = head // GROUP
        d = tl.arange(0, HEAD_DIM)
        rows, row_ok, tok = _tile_rows(start, seq_len, tile_start, BM)
        q = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok, True)
        do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok, True)
        lse2, delta = _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, row_ok, True)
        dq = tl.zeros([BM, HEAD_DIM], tl.float32)
        # Rows past the sequence have q = dO = 0, so dS = 0 there: only keys need masks.
        for j in range(0, (tile_start + 1) // BN):
            dq = _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, qk_scale_log2,
                          stride_kt, stride_kh, stride_vt, stride_vh, d, BN, False, IEEE)
        for j in range((tile_start + 1) // BN, tl.cdiv(tl.minimum(tile_start + BM, seq_len), BN)):
            dq = _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, qk_scale_log2,
                          stride_kt, stride_kh, stride_vt, stride_vh, d, BN, True, IEEE)
        dq = dq * scale
        tl.store(_rows(dq_ptr, tok, head, stride_qt, stride_qh, d), dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None])

    @triton.jit
    def _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr, delta_ptr,
                   qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d,
                   BM: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr):
        """dV += P^T dO and dK += dS^T Q over query tile i (MASKED=False: every row valid, at or after every key)."""
        rows, row_ok, tok = _tile_rows(start, seq_len, i * BM, BM)
        qq = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok, MASKED)
        do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok, MASKED)
        lse2, delta = _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, row_ok, MASKED)
        pt = tl.exp2(dot(k, tl.trans(qq), None, IEEE) * qk_scale_log2 - lse2[None, :])
        if MASKED:
            pt = tl.where((k_pos < seq_len)[:, None] & row_ok[None, :] & (k_pos[:, None] <= rows[None, :]), pt, 0.0)
        dv = dot(pt.to(do.dtype), do, dv, IEEE)
        dpt = dot(v, tl.trans(do), None, IEEE)
        dst = (pt * (dpt - delta[None, :])).to(qq.dtype)
        return dot(dst, qq, dk, IEEE), dv

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_ptr, num_seqs, qk_scale_log2, scale,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
    ):
        kv_head = tl.program_id(1)
        n_heads = tl.num_programs(1) * GROUP
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, tl.program_id(0), num_seqs, BN)
        if tile_start >= seq_len:
            return
        d = tl.arange(0, HEAD_DIM)
        k_pos, k_ok, k_tok = _tile_rows(start, seq_len, tile_start, BN)
        k = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok, True)
        v = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok, True)
        dk = tl.zeros([BN, HEAD_DIM], tl.float32)
        dv = tl.zeros([BN, HEAD_DIM], tl.float32)
        n_tiles = tl.cdiv(seq_len, BM)
        full_from = tl.minimum(tl.cdiv(tile_start + BN - 1, BM), n_tiles)  # rows at or after every key
        full_to = tl.maximum(seq_len // BM, full_from)  # rows all inside the sequence
        for g in range(GROUP):
            head = kv_head * GROUP + g
            for i in range(tile_start // BM, full_from):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d, BM,
                                    True, IEEE)
            for i in range(full_from, full_to):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d, BM,
                                    False, IEEE)
            for i in range(full_to, n_tiles):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d, BM,
                                    True, IEEE)
        dk = dk * scale
        tl.store(_rows(dk_ptr, k_tok, kv_head, stride_kt, stride_kh, d), dk.to(dk_ptr.dtype.element_ty), mask=k_ok[:, None])
        tl.store(_rows(dv_ptr, k_tok, kv_head, stride_vt, stride_vh, d), dv.to(dv_ptr.dtype.element_ty), mask=k_ok[:, None])


def attention_backward_triton(q, k, v, out, lse, do, cu_seqlens, scale):
    """-> (dq, dk, dv) of packed training q/k/v (k/v rows = q rows)."""
    require_triton("attention")
    t, hq, d = q.shape
    hkv = k.shape[1]
    num_seqs = cu_seqlens.shape[0] - 1
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    delta = (do.float() * out.float()).sum(-1).contiguous()  # [T, Hq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if t == 0:
        return dq, dk, dv
    common = dict(GROUP=hq // hkv, HEAD_DIM=d, IEEE=q.dtype == torch.float32)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    bm, bn, warps, stages = BWD_TILE[q.dtype]
    _attn_bwd_dq_kernel[(t // bm + num_seqs, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, BM=bm, BN=bn,
        num_warps=warps, num_stages=stages, **common)
    _attn_bwd_dkdv_kernel[(t // bn + num_seqs, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, BM=bm, BN=bn,
        num_warps=warps, num_stages=stages, **common)
    return dq, dk, dv
