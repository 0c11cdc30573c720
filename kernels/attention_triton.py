"""Triton kernels of `kernels.attention`: one forward for training, chunked prefill and decode; the training backward.

Forward: one program per (query tile of `GPU_BLOCK_Q` queries of one sequence, q head) -- for the engine, per
(tile of GPU_BLOCK_Q // group positions x the group's q heads, kv head) -- keys are reduced from
position 0 upward in `BLOCK_K`-key tiles for every caller, masked or unused slots load as 0 and score -inf,
online softmax in fp32, optional fp32 logsumexp. No split-KV, no atomics, one tile config per (dtype, D).
Backward (packed training K/V only): delta = rowsum(dO * O) in torch, then a dq kernel (one program per (query
tile, q head), loop over key tiles) and a dk/dv kernel (one program per (key tile, kv head), loops over the q
heads of its group and the query tiles) -- no atomics, so run-to-run deterministic; not batch invariant.
Left out: dropout, sliding windows, a fused (single-kernel) backward, split-KV decode (not batch invariant).
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import LOG2E, require_triton, tl, triton

# Queries per forward tile for every caller. Measured on the H100 (docs/invariance.md): 64 made causal prefill
# 1.3-1.8x faster but decode up to 1.75x slower (engine tok/s at batch 256: 10.8k vs 14.9k), so 16.
GPU_BLOCK_Q = 16
BLOCK_K = 64  # keys per tile, tiles start at key position 0 (the CPU path reduces the same key tiles)
BWD_BLOCK_M = 32  # query tile of the backward kernels
BWD_BLOCK_N = 64  # key tile of the backward kernels


def num_warps(d: int) -> int:
    return 4 if d <= 64 else 8


if triton is not None:
    from onpolicy.kernels._common import dot

    _LOG2E = tl.constexpr(LOG2E)

    @triton.jit
    def _seq_tile(cu_ptr, pid, num_seqs, BLOCK: tl.constexpr):
        """Program `pid` of the packed tile grid (tile t of sequence b has id cu[b] // BLOCK + b + t) ->
        (b, first token of b, length of b, first row of the tile within b); the row is >= the length for
        the grid's spare programs."""
        lo: tl.int32 = 0
        hi = num_seqs
        while lo < hi:  # largest b with cu[b] // BLOCK + b <= pid
            mid = (lo + hi) // 2
            start = tl.load(cu_ptr + mid) // BLOCK + mid
            if start <= pid:
                lo = mid + 1
            else:
                hi = mid
        b = lo - 1
        first = tl.load(cu_ptr + b)
        length = tl.load(cu_ptr + b + 1) - first
        return b, first, length, (pid - (first // BLOCK + b)) * BLOCK

    @triton.jit
    def _tile_heads(tile_start, GROUP: tl.constexpr, BQ: tl.constexpr, PACK: tl.constexpr):
        """(q head, kv head, query row within the sequence) of each of a forward tile's BQ rows."""
        r = tl.arange(0, BQ)
        if PACK:
            kv_head = tl.program_id(1)
            return kv_head * GROUP + r % GROUP, kv_head, tile_start + r // GROUP
        return tl.program_id(1) + 0 * r, tl.program_id(1) // GROUP, tile_start + r

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_q_ptr, seqlens_k_ptr, block_table_ptr, kv_offsets_ptr,
        num_seqs, block_size, qk_scale_log2,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_bt,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
        WRITE_LSE: tl.constexpr, IEEE: tl.constexpr, PACK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        # PACK (engine): the tile's BQ rows are BQ // GROUP query positions x the GROUP q heads of kv head
        # program_id(1), so one program reads its K/V once for the whole group. Otherwise: BQ positions of q head
        # program_id(1). Either way each row runs the same [BQ, BK] dots and the same key tiles in the same order.
        QP: tl.constexpr = BQ // GROUP if PACK else BQ
        b, q_begin, q_len, tile_start = _seq_tile(cu_q_ptr, pid, num_seqs, QP)
        if tile_start >= q_len:
            return
        ctx_len = tl.load(seqlens_k_ptr + b)
        kv_off = tl.load(kv_offsets_ptr + b).to(tl.int64)
        head, kv_head, rows = _tile_heads(tile_start, GROUP, BQ, PACK)
        row_ok = rows < q_len
        q_pos = ctx_len - q_len + rows
        d = tl.arange(0, HEAD_DIM)
        q_tok = (q_begin + rows).to(tl.int64)
        q_ptrs = q_ptr + q_tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)

        m = tl.full([BQ], float("-inf"), tl.float32)
        l = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, HEAD_DIM], tl.float32)
        last_pos = ctx_len - q_len + tl.minimum(tile_start + QP, q_len)  # one past the tile's last query position
        for j in range(0, tl.cdiv(last_pos, BK)):
            k_pos = j * BK + tl.arange(0, BK)
            k_ok = k_pos < ctx_len
            blk = tl.load(block_table_ptr + b * stride_bt + k_pos // block_size, mask=k_ok, other=0)
            slot = kv_off + blk.to(tl.int64) * block_size + (k_pos % block_size)
            kv_mask = k_ok[:, None]
            kk = tl.load(k_ptr + slot[:, None] * stride_kt + kv_head * stride_kh + d[None, :], mask=kv_mask, other=0.0)
            s = dot(q, tl.trans(kk), None, IEEE)
            s = s * qk_scale_log2
            keep = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            vt = tl.load(v_ptr + slot[:, None] * stride_vt + kv_head * stride_vh + d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None]
            acc = dot(p.to(vt.dtype), vt, acc, IEEE)
            m = m_new
        out = acc / l[:, None]
        o_ptrs = o_ptr + q_tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
        if WRITE_LSE:  # natural-log logsumexp of the scaled scores, [T, Hq] contiguous
            lse = (m + tl.log2(l)) / _LOG2E
            n_heads = tl.num_programs(1) * GROUP if PACK else tl.num_programs(1)
            tl.store(lse_ptr + q_tok * n_heads + head, lse, mask=row_ok)


    @triton.jit
    def _rows(ptr, tok, head, stride_t, stride_h, d):
        """Pointers to rows `tok` of head `head`: a [len(tok), HEAD_DIM] block."""
        return ptr + tok[:, None] * stride_t + head * stride_h + d[None, :]


    @triton.jit
    def _tile_rows(start, length, tile_start, BLOCK: tl.constexpr):
        """Positions of a tile's BLOCK rows within their sequence, which of them exist, and their token ids."""
        pos = tile_start + tl.arange(0, BLOCK)
        return pos, pos < length, (start + pos).to(tl.int64)

    @triton.jit
    def _load_rows(ptr, tok, head, stride_t, stride_h, d, ok):
        """The [len(tok), HEAD_DIM] block of rows `tok` of head `head`; rows where `ok` is False load as 0."""
        return tl.load(_rows(ptr, tok, head, stride_t, stride_h, d), mask=ok[:, None], other=0.0)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_ptr, num_seqs, qk_scale_log2, scale,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        head = tl.program_id(1)
        n_heads = tl.num_programs(1)
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, pid, num_seqs, BM)
        if tile_start >= seq_len:
            return
        kv_head = head // GROUP
        d = tl.arange(0, HEAD_DIM)
        rows, row_ok, tok = _tile_rows(start, seq_len, tile_start, BM)
        q = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok)
        do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok)
        lse2 = tl.load(lse_ptr + tok * n_heads + head, mask=row_ok, other=0.0) * _LOG2E
        delta = tl.load(delta_ptr + tok * n_heads + head, mask=row_ok, other=0.0)
        dq = tl.zeros([BM, HEAD_DIM], tl.float32)
        for j in range(0, tl.cdiv(tl.minimum(tile_start + BM, seq_len), BN)):
            k_pos = j * BN + tl.arange(0, BN)
            k_ok = k_pos < seq_len
            k_tok = (start + k_pos).to(tl.int64)
            kk = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok)
            vv = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok)
            s = dot(q, tl.trans(kk), None, IEEE)
            dp = dot(do, tl.trans(vv), None, IEEE)
            keep = row_ok[:, None] & k_ok[None, :] & (k_pos[None, :] <= rows[:, None])
            p = tl.where(keep, tl.exp2(s * qk_scale_log2 - lse2[:, None]), 0.0)
            ds = (p * (dp - delta[:, None])).to(kk.dtype)
            dq = dot(ds, kk, dq, IEEE)
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
        b, start, seq_len, tile_start = _seq_tile(cu_ptr, pid, num_seqs, BN)
        if tile_start >= seq_len:
            return
        d = tl.arange(0, HEAD_DIM)
        k_pos, k_ok, k_tok = _tile_rows(start, seq_len, tile_start, BN)
        k = _load_rows(k_ptr, k_tok, kv_head, stride_kt, stride_kh, d, k_ok)
        v = _load_rows(v_ptr, k_tok, kv_head, stride_vt, stride_vh, d, k_ok)
        dk = tl.zeros([BN, HEAD_DIM], tl.float32)
        dv = tl.zeros([BN, HEAD_DIM], tl.float32)
        for g in range(GROUP):
            head = kv_head * GROUP + g
            for i in range(tile_start // BM, tl.cdiv(seq_len, BM)):
                rows = i * BM + tl.arange(0, BM)
                row_ok = rows < seq_len
                tok = (start + rows).to(tl.int64)
                qq = _load_rows(q_ptr, tok, head, stride_qt, stride_qh, d, row_ok)
                do = _load_rows(do_ptr, tok, head, stride_dt, stride_dh, d, row_ok)
                lse2 = tl.load(lse_ptr + tok * n_heads + head, mask=row_ok, other=0.0) * _LOG2E
                delta = tl.load(delta_ptr + tok * n_heads + head, mask=row_ok, other=0.0)
                st = dot(k, tl.trans(qq), None, IEEE)
                keep = k_ok[:, None] & row_ok[None, :] & (k_pos[:, None] <= rows[None, :])
                pt = tl.where(keep, tl.exp2(st * qk_scale_log2 - lse2[None, :]), 0.0)
                dv = dot(pt.to(do.dtype), do, dv, IEEE)
                dpt = dot(v, tl.trans(do), None, IEEE)
                dst = (pt * (dpt - delta[None, :])).to(qq.dtype)
                dk = dot(dst, qq, dk, IEEE)
        dk = dk * scale
        tl.store(_rows(dk_ptr, k_tok, kv_head, stride_kt, stride_kh, d), dk.to(dk_ptr.dtype.element_ty), mask=k_ok[:, None])
        tl.store(_rows(dv_ptr, k_tok, kv_head, stride_vt, stride_vh, d), dv.to(dv_ptr.dtype.element_ty), mask=k_ok[:, None])


if triton is not None:

    @triton.jit
    def _kv_write_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_k, stride_v, stride_kc, stride_vc,
                         ROW: tl.constexpr, BLOCK: tl.constexpr):
        """One program per new token: copy its k and v rows (all kv heads, ROW elements) into cache slot
        slot_mapping[t]. Slots are distinct, so no two programs write one place (no atomics, no sort)."""
        t = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + t)
        offs = tl.arange(0, BLOCK)
        ok = offs < ROW
        tl.store(kc_ptr + slot * stride_kc + offs, tl.load(k_ptr + t * stride_k + offs, mask=ok), mask=ok)
        tl.store(vc_ptr + slot * stride_vc + offs, tl.load(v_ptr + t * stride_v + offs, mask=ok), mask=ok)


def kv_write_triton(k_cache, v_cache, slot_mapping, k, v) -> None:
    """k/v [T, Hkv, D] (each token's row contiguous) into k_cache/v_cache [slots, Hkv, D] at slot_mapping [T]."""
    require_triton("write_kv_cache")
    t, hkv, d = k.shape
    if t:
        row = hkv * d
        _kv_write_kernel[(t,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0), k_cache.stride(0),
                               v_cache.stride(0), ROW=row, BLOCK=triton.next_power_of_2(row), num_warps=4)


def attention_forward_triton(q, k, v, cu_q, seqlens_k, block_table, kv_offsets, block_size, scale, with_lse,
                             pack: bool = False):
    """-> (out [T, Hq, D] in q.dtype, fp32 logsumexp [T, Hq] or None); no host sync. `pack` (the engine): a tile
    holds GPU_BLOCK_Q // group positions x the group's q heads, so K/V are read once per kv head (decode reads
    1/group of the bytes); each row's arithmetic is unchanged (tested: engine vs trainer torch.equal)."""
    require_triton("attention")
    t, hq, d = q.shape
    group = hq // k.shape[1]
    pack = pack and group > 1 and GPU_BLOCK_Q % group == 0
    num_seqs = seqlens_k.shape[0]
    out = torch.empty_like(q)
    lse = torch.empty((t, hq), device=q.device, dtype=torch.float32) if with_lse else out
    if t == 0:
        return out, (lse if with_lse else None)
    positions = GPU_BLOCK_Q // group if pack else GPU_BLOCK_Q
    grid = (t // positions + num_seqs, k.shape[1] if pack else hq)  # >= sum(ceil(q_len / positions)); no host sync
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, cu_q, seqlens_k, block_table, kv_offsets,
        num_seqs, block_size, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=hq // k.shape[1], HEAD_DIM=d, BQ=GPU_BLOCK_Q, BK=BLOCK_K,
        WRITE_LSE=with_lse, IEEE=q.dtype == torch.float32, PACK=pack, num_warps=num_warps(d), num_stages=2,
    )
    return out, (lse if with_lse else None)


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
    common = dict(GROUP=hq // hkv, HEAD_DIM=d, BM=BWD_BLOCK_M, BN=BWD_BLOCK_N, IEEE=q.dtype == torch.float32,
                  num_warps=num_warps(d), num_stages=1)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    _attn_bwd_dq_kernel[(t // BWD_BLOCK_M + num_seqs, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, **common)
    _attn_bwd_dkdv_kernel[(t // BWD_BLOCK_N + num_seqs, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, num_seqs, scale * LOG2E, scale, *strides, **common)
    return dq, dk, dv
