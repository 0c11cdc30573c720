"""Triton backward of `kernels.attention_varlen` (packed training q/k/v, causal): delta = rowsum(dO * O) in torch,
then a dq kernel (one program per (query tile, q head), loop over key tiles) and a dk/dv kernel (one program per
(key tile, kv head), loops over the q heads of its group and the query tiles). Tiles that lie wholly inside the
causal triangle (and sliding window) and the sequence skip the masks; a window bounds both loops to the tiles
that hold a (query, key) pair of it. head_dim 96 runs as 128 with zero-padded (masked) columns. No atomics, so
run-to-run deterministic; not batch invariant (the trainer needs the same gradients run to run, not per batch).
Left out: dropout, a fused single-kernel backward.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import LOG2E, require_triton, tl, triton
from onpolicy.kernels.attention_triton import padded_head_dim

# (query rows, key rows, warps, stages) of both kernels, per dtype. bf16: measured best of 7 configs on the H100
# (2x the old 32-row tile); fp32 keeps the old tile, as the forward does (`FWD_TILE`).
BWD_TILE = {torch.bfloat16: (64, 64, 4, 1), torch.float32: (32, 64, 8, 1)}
# head_dim 256: 32 x 32 tiles over 8 warps keep the [tile, 256] fp32 gradient accumulators in registers (not
# measured against other configs; the backward's tile is free to change, it is not batch invariant anyway).
WIDE_BWD_TILE = {torch.bfloat16: (32, 32, 8, 1), torch.float32: (32, 32, 8, 1)}


if triton is not None:
    from onpolicy.kernels._common import dot
    from onpolicy.kernels.attention_triton import _load_tile, _seq_tile

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
    def _load_rows(ptr, tok, head, stride_t, stride_h, d, ok, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
                   HEAD_PAD: tl.constexpr):
        """The [len(tok), HEAD_PAD] block of rows `tok` of head `head`; MASKED: rows where `ok` is False load as 0;
        padded columns load as 0."""
        return _load_tile(_rows(ptr, tok, head, stride_t, stride_h, d), ok, d, MASKED, HEAD_DIM, HEAD_PAD)

    @triton.jit
    def _store_rows(ptr, x, tok, head, stride_t, stride_h, d, ok, HEAD_DIM: tl.constexpr):
        tl.store(_rows(ptr, tok, head, stride_t, stride_h, d), x.to(ptr.dtype.element_ty),
                 mask=ok[:, None] & (d < HEAD_DIM)[None, :])

    @triton.jit
    def _bounds(lo, f0, f1, hi):
        """Tile ranges [lo, f0) masked, [f0, f1) unmasked, [f1, hi) masked, with lo <= f0 <= f1 <= hi."""
        f0 = tl.minimum(tl.maximum(f0, lo), hi)
        return f0, tl.minimum(tl.maximum(f1, f0), hi)

    @triton.jit
    def _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, ok, MASKED: tl.constexpr):
        """(lse * log2(e), delta) of rows `tok` of head `head`; MASKED: rows where `ok` is False load as 0."""
        if MASKED:
            lse = tl.load(lse_ptr + tok * n_heads + head, mask=ok, other=0.0)
            return lse * _LOG2E, tl.load(delta_ptr + tok * n_heads + head, mask=ok, other=0.0)
        return tl.load(lse_ptr + tok * n_heads + head) * _LOG2E, tl.load(delta_ptr + tok * n_heads + head)

    @triton.jit
    def _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, window, qk_scale_log2,
                 stride_kt, stride_kh, stride_vt, stride_vh, d, BN: tl.constexpr, HEAD_DIM: tl.constexpr,
                 HEAD_PAD: tl.constexpr, MASKED: tl.constexpr, WINDOWED: tl.constexpr, IEEE: tl.constexpr):
        """dq += dS @ K over key tile j (MASKED=False: every key valid and inside every row's window)."""
        k_pos, k_ok, k_tok = _tile_rows(start, seq_len, j * BN, BN)
        kk = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok, MASKED, HEAD_DIM, HEAD_PAD)
        vv = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok, MASKED, HEAD_DIM, HEAD_PAD)
        s = dot(q, tl.trans(kk), None, IEEE)
        dp = dot(do, tl.trans(vv), None, IEEE)
        p = tl.exp2(s * qk_scale_log2 - lse2[:, None])
        if MASKED:
            keep = k_ok[None, :] & (k_pos[None, :] <= rows[:, None])
            if WINDOWED:
                keep = keep & (k_pos[None, :] > rows[:, None] - window)
            p = tl.where(keep, p, 0.0)
        ds = (p * (dp - delta[:, None])).to(kk.dtype)
        return dot(ds, kk, dq, IEEE)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_ptr, num_seqs, window, qk_scale_log2, scale,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        WINDOWED: tl.constexpr, IEEE: tl.constexpr,
    ):
        head = tl.program_id(1)
        n_heads = tl.num_programs(1)
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, tl.program_id(0), num_seqs, BM)
        if tile_start >= seq_len:
            return
        kv_head = head // GROUP
        d = tl.arange(0, HEAD_PAD)
        rows, row_ok, tok = _tile_rows(start, seq_len, tile_start, BM)
        q = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok, True, HEAD_DIM, HEAD_PAD)
        do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok, True, HEAD_DIM, HEAD_PAD)
        lse2, delta = _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, row_ok, True)
        dq = tl.zeros([BM, HEAD_PAD], tl.float32)
        # Rows past the sequence have q = dO = 0, so dS = 0 there: only keys need masks.
        last = tl.minimum(tile_start + BM, seq_len) - 1
        hi = tl.cdiv(last + 1, BN)
        lo = hi * 0
        f0, f1 = _bounds(lo, lo, (tile_start + 1) // BN, hi)  # unmasked: keys at or below every row
        if WINDOWED:  # key tiles from the first row's window on; unmasked ones lie inside the last row's too
            lo = tl.maximum(tile_start - window + 1, 0) // BN
            f0, f1 = _bounds(lo, tl.cdiv(tl.maximum(last - window + 1, 0), BN), (tile_start + 1) // BN, hi)
            for j in range(lo, f0):
                dq = _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, window,
                              qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh, d, BN, HEAD_DIM, HEAD_PAD,
                              True, True, IEEE)
        for j in range(f0, f1):
            dq = _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, window,
                          qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh, d, BN, HEAD_DIM, HEAD_PAD,
                          False, WINDOWED, IEEE)
        for j in range(f1, hi):
            dq = _dq_step(dq, q, do, lse2, delta, rows, j, start, seq_len, k_ptr, v_ptr, kv_head, window,
                          qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh, d, BN, HEAD_DIM, HEAD_PAD,
                          True, WINDOWED, IEEE)
        _store_rows(dq_ptr, dq * scale, tok, head, stride_qt, stride_qh, d, row_ok, HEAD_DIM)

    @triton.jit
    def _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr, delta_ptr, window,
                   qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d, BM: tl.constexpr,
                   HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, MASKED: tl.constexpr, WINDOWED: tl.constexpr,
                   IEEE: tl.constexpr):
        """dV += P^T dO and dK += dS^T Q over query tile i (MASKED=False: every row valid, at or after every key
        and inside its window)."""
        rows, row_ok, tok = _tile_rows(start, seq_len, i * BM, BM)
        qq = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok, MASKED, HEAD_DIM, HEAD_PAD)
        do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok, MASKED, HEAD_DIM, HEAD_PAD)
        lse2, delta = _load_row_stats(lse_ptr, delta_ptr, tok, head, n_heads, row_ok, MASKED)
        pt = tl.exp2(dot(k, tl.trans(qq), None, IEEE) * qk_scale_log2 - lse2[None, :])
        if MASKED:
            keep = (k_pos < seq_len)[:, None] & row_ok[None, :] & (k_pos[:, None] <= rows[None, :])
            if WINDOWED:
                keep = keep & (k_pos[:, None] > rows[None, :] - window)
            pt = tl.where(keep, pt, 0.0)
        dv = dot(pt.to(do.dtype), do, dv, IEEE)
        dpt = dot(v, tl.trans(do), None, IEEE)
        dst = (pt * (dpt - delta[None, :])).to(qq.dtype)
        return dot(dst, qq, dk, IEEE), dv

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_ptr, num_seqs, window, qk_scale_log2,
        scale, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        WINDOWED: tl.constexpr, IEEE: tl.constexpr,
    ):
        kv_head = tl.program_id(1)
        n_heads = tl.num_programs(1) * GROUP
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, tl.program_id(0), num_seqs, BN)
        if tile_start >= seq_len:
            return
        d = tl.arange(0, HEAD_PAD)
        k_pos, k_ok, k_tok = _tile_rows(start, seq_len, tile_start, BN)
        k = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok, True, HEAD_DIM, HEAD_PAD)
        v = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok, True, HEAD_DIM, HEAD_PAD)
        dk = tl.zeros([BN, HEAD_PAD], tl.float32)
        dv = tl.zeros([BN, HEAD_PAD], tl.float32)
        hi = tl.cdiv(seq_len, BM)
        full_from = tl.minimum(tl.cdiv(tile_start + BN - 1, BM), hi)  # rows at or after every key
        full_to = tl.maximum(seq_len // BM, full_from)  # rows all inside the sequence
        if WINDOWED:  # query tiles up to the last key's window; unmasked ones also inside the first key's
            hi = tl.minimum(hi, tl.cdiv(tile_start + BN - 1 + window, BM))
            full_to = tl.minimum(full_to, (tile_start + window) // BM)
        f0, f1 = _bounds(tile_start // BM, full_from, full_to, hi)
        for g in range(GROUP):
            head = kv_head * GROUP + g
            for i in range(tile_start // BM, f0):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, window, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d,
                                    BM, HEAD_DIM, HEAD_PAD, True, WINDOWED, IEEE)
            for i in range(f0, f1):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, window, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d,
                                    BM, HEAD_DIM, HEAD_PAD, False, WINDOWED, IEEE)
            for i in range(f1, hi):
                dk, dv = _dkdv_step(dk, dv, k, v, k_pos, i, start, seq_len, head, n_heads, q_ptr, do_ptr, lse_ptr,
                                    delta_ptr, window, qk_scale_log2, stride_qt, stride_qh, stride_dt, stride_dh, d,
                                    BM, HEAD_DIM, HEAD_PAD, True, WINDOWED, IEEE)
        _store_rows(dk_ptr, dk * scale, k_tok, kv_head, stride_kt, stride_kh, d, k_ok, HEAD_DIM)
        _store_rows(dv_ptr, dv, k_tok, kv_head, stride_vt, stride_vh, d, k_ok, HEAD_DIM)


def attention_backward_triton(q, k, v, out, lse, do, cu_seqlens, scale, window: int | None = None):
    """-> (dq, dk, dv) of packed training q/k/v (k/v rows = q rows); `window`: as the forward's."""
    require_triton("attention")
    t, hq, d = q.shape
    hkv = k.shape[1]
    num_seqs = cu_seqlens.shape[0] - 1
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    delta = (do.float() * out.float()).sum(-1).contiguous()  # [T, Hq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if t == 0:
        return dq, dk, dv
    common = dict(GROUP=hq // hkv, HEAD_DIM=d, HEAD_PAD=padded_head_dim(d), WINDOWED=window is not None,
                  IEEE=q.dtype == torch.float32)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    bm, bn, warps, stages = (WIDE_BWD_TILE if d > 128 else BWD_TILE)[q.dtype]
    win = 0 if window is None else window
    _attn_bwd_dq_kernel[(t // bm + num_seqs, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, num_seqs, win, scale * LOG2E, scale, *strides, BM=bm, BN=bn,
        num_warps=warps, num_stages=stages, **common)
    _attn_bwd_dkdv_kernel[(t // bn + num_seqs, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, num_seqs, win, scale * LOG2E, scale, *strides, BM=bm, BN=bn,
        num_warps=warps, num_stages=stages, **common)
    return dq, dk, dv
