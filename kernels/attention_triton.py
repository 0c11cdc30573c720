"""Triton forward of `kernels.attention`: one kernel for training, chunked prefill and decode.

One program per (query tile of one sequence, q head) -- for the engine, per (tile of rows // group positions x
the group's q heads, kv head) -- keys are reduced in key tiles aligned at key position 0 for every caller, online
softmax in fp32, in fixed `KV_SPLIT`-key splits folded in key order (in the kernel, or by parallel programs +
`_combine_splits_kernel` for small decode batches: the same arithmetic), optional fp32 logsumexp. Key tiles
that lie wholly inside every row's causal (and sliding) window skip the masks; the rest mask (unused slots load
as 0 and add exact zeros). A sliding window starts each row's reduction at the first tile / split that holds a
key of its window: the tiles and splits before it would add exact no-ops (see `EMPTY_MAX`), so skipping them
keeps the bits. head_dim 96 runs as 128 with zero-padded (masked) columns. Why a row's bits do not depend on its
tile: see `fwd_tile`. No atomics, one tile config per (dtype, head_dim), one split size.
Left out: soft-capping, a logsumexp from the parallel-split path, windows that look ahead (non-causal).
The backward: `attention_bwd_triton.py`; the KV-cache write: `attention_kv_triton.py`.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import LOG2E, require_triton, tl, triton

# Forward tile: (query rows, warps) per dtype, for every caller. bf16 (tensor cores): 64 rows over 4 warps; on
# the H100 each warp then owns 16 whole rows of the [64, BLOCK_K] score tile (wgmma), so a row's dots, row max
# and row sum run in one order whatever its tile holds -- measured, tiles of 64 (4 or 8 warps), 128 (4 or 8) and
# 16 (1 warp) give the same bits, 16 rows over 4 or 8 warps do not; 64 rows run causal prefill 3x faster than 16
# at about the same decode speed (docs/invariance.md). fp32 (exact fp32 products, CUDA-core dots): 16 rows, as
# before -- with 64 rows the fp32 GPU tests ran many times slower. `fwd_tile` gives every caller one tile.
FWD_TILE = {torch.bfloat16: (64, 4), torch.float32: (16, 8)}
BLOCK_K = 64  # keys per tile, tiles start at key position 0 (the CPU path reduces the same key tiles)
# head_dim 256 (Gemma): the same query rows over 8 warps and 32-key tiles, so the [rows, 256] fp32 accumulators
# (two while splits fold) and the K/V tiles fit the H100's registers and shared memory.
WIDE_TILE = {torch.bfloat16: (64, 8), torch.float32: (16, 8)}
WIDE_BLOCK_K = 32
FWD_STAGES = 2  # software-pipelining depth of the key loop: changes speed, never a row's arithmetic


def fwd_tile(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int]:
    """(query rows, keys per tile, warps) of the forward for (dtype, head_dim): every caller (training, prefill,
    decode, either decode schedule) uses it, so a row's key tiles, splits and reduction order agree."""
    if head_dim > 128:
        return WIDE_TILE[dtype][0], WIDE_BLOCK_K, WIDE_TILE[dtype][1]
    return FWD_TILE[dtype][0], BLOCK_K, FWD_TILE[dtype][1]


def padded_head_dim(head_dim: int) -> int:
    """The kernels' power-of-two head width (tl.arange needs one): 96 -> 128; padded columns load as 0."""
    return 1 << (head_dim - 1).bit_length()


# Keys per split: every GPU caller reduces a row's keys in fixed 512-key splits (from position 0), each from a
# fresh online-softmax state, and folds the splits in key order (`_fold_split`). Training and prefill fold in
# the kernel; decode may run the splits as parallel programs and fold them in `_combine_splits_kernel` --
# the same arithmetic, so the same bits. The split *size* is fixed; how many splits a row has depends only on
# its own position.
KV_SPLIT = 512
# A fresh state's running max: finite, so a row with no key in a split keeps (m, l, acc) = (EMPTY_MAX, 0, 0)
# (with -inf, exp2(-inf - -inf) would be NaN); any real scaled score is far above it, so exp2(EMPTY_MAX - m)
# is exactly 0 as exp2(-inf) was. Hence a key tile with no key for a row leaves its state bit for bit as it
# was, and an empty split folds as an exact no-op, first or later: a window may skip them.
EMPTY_MAX = -1.0e30


if triton is not None:
    from onpolicy.kernels._common import dot

    _LOG2E = tl.constexpr(LOG2E)
    _EMPTY_MAX = tl.constexpr(EMPTY_MAX)

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
    def _load_tile(ptrs, row_ok, d, MASK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr):
        """A [rows, HEAD_PAD] tile; rows where `row_ok` is False (MASK_ROWS) and padded columns load as 0."""
        if HEAD_PAD != HEAD_DIM:
            if MASK_ROWS:
                return tl.load(ptrs, mask=row_ok[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
            return tl.load(ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
        if MASK_ROWS:
            return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        return tl.load(ptrs)

    @triton.jit
    def _fold_key_tile(q, acc, m, l, j, k_ptr, v_ptr, table_row, kv_off, kv_head, ctx_len, q_pos, block_size,
                       window, qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh, HEAD_DIM: tl.constexpr,
                       HEAD_PAD: tl.constexpr, BK: tl.constexpr, MASKED: tl.constexpr, WINDOWED: tl.constexpr,
                       IEEE: tl.constexpr):
        """One online-softmax step over key tile j -> (acc, m, l). MASKED=False: every key of the tile is valid
        and inside every row's window. The exponent is one explicit fma in both variants, so a tile that happens
        to need no mask gives the same bits either way (left to ptxas, the unmasked one could fuse alone)."""
        k_pos = j * BK + tl.arange(0, BK)
        k_ok = k_pos < ctx_len
        d = tl.arange(0, HEAD_PAD)
        if MASKED:
            blk = tl.load(table_row + k_pos // block_size, mask=k_ok, other=0)
        else:
            blk = tl.load(table_row + k_pos // block_size)
        slot = kv_off + blk.to(tl.int64) * block_size + (k_pos % block_size)
        kk = _load_tile(k_ptr + slot[:, None] * stride_kt + kv_head * stride_kh + d[None, :], k_ok, d, MASKED,
                        HEAD_DIM, HEAD_PAD)
        s = dot(q, tl.trans(kk), None, IEEE)
        if MASKED:
            keep = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
            if WINDOWED:
                keep = keep & (k_pos[None, :] > q_pos[:, None] - window)
            m_new = tl.maximum(m, tl.max(tl.where(keep, s * qk_scale_log2, float("-inf")), 1))
            p = tl.where(keep, tl.exp2(tl.fma(s, qk_scale_log2, -m_new[:, None])), 0.0)
        else:
            m_new = tl.maximum(m, tl.max(s * qk_scale_log2, 1))
            p = tl.exp2(tl.fma(s, qk_scale_log2, -m_new[:, None]))
        vt = _load_tile(v_ptr + slot[:, None] * stride_vt + kv_head * stride_vh + d[None, :], k_ok, d, MASKED,
                        HEAD_DIM, HEAD_PAD)
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = dot(p.to(vt.dtype), vt, acc, IEEE)
        return acc, m_new, l

    @triton.jit
    def _run_split(q, s, first, full_lo, n_full, n_end, k_ptr, v_ptr, table_row, kv_off, kv_head, ctx_len, q_pos,
                   block_size, window, qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh,
                   HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
                   ST: tl.constexpr, WINDOWED: tl.constexpr, IEEE: tl.constexpr):
        """Online softmax over split s (key tiles max(s*ST, first) .. min(s*ST + ST, n_end)) from a fresh state
        -> (acc, m, l). Tiles in [full_lo, n_full) lie wholly inside every row's window and skip the masks."""
        m = tl.full([BQ], _EMPTY_MAX, tl.float32)
        l = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, HEAD_PAD], tl.float32)
        lo = s * ST
        hi = tl.minimum(lo + ST, n_end)
        if WINDOWED:  # tiles before the window's first key for the tile's first row: exact no-ops, skipped
            lo = tl.minimum(tl.maximum(lo, first), hi)
            f0 = tl.minimum(tl.maximum(full_lo, lo), hi)
            for j in range(lo, f0):  # partly outside some row's window
                acc, m, l = _fold_key_tile(q, acc, m, l, j, k_ptr, v_ptr, table_row, kv_off, kv_head, ctx_len,
                                           q_pos, block_size, window, qk_scale_log2, stride_kt, stride_kh,
                                           stride_vt, stride_vh, HEAD_DIM, HEAD_PAD, BK, True, True, IEEE)
            lo = f0
        for j in range(lo, tl.minimum(hi, n_full)):
            acc, m, l = _fold_key_tile(q, acc, m, l, j, k_ptr, v_ptr, table_row, kv_off, kv_head, ctx_len, q_pos,
                                       block_size, window, qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh,
                                       HEAD_DIM, HEAD_PAD, BK, False, WINDOWED, IEEE)
        for j in range(tl.maximum(lo, n_full), hi):
            acc, m, l = _fold_key_tile(q, acc, m, l, j, k_ptr, v_ptr, table_row, kv_off, kv_head, ctx_len, q_pos,
                                       block_size, window, qk_scale_log2, stride_kt, stride_kh, stride_vt, stride_vh,
                                       HEAD_DIM, HEAD_PAD, BK, True, WINDOWED, IEEE)
        return acc, m, l

    @triton.jit
    def _fold_split(acc, m, l, acc_s, m_s, l_s):
        """Fold split state (acc_s, m_s, l_s) into the running (acc, m, l); explicit fmas, so every kernel that
        calls it (whatever its layout) rounds the same way. An empty split (EMPTY_MAX, 0, 0) changes nothing."""
        m_new = tl.maximum(m, m_s)
        a = tl.exp2(m - m_new)
        b = tl.exp2(m_s - m_new)
        return tl.fma(acc, a[:, None], acc_s * b[:, None]), m_new, tl.fma(l, a, l_s * b)

    @triton.jit
    def _store_split(part_ptr, acc, m, l, tok, head, s, n_splits, n_heads, ok, d, HEAD_DIM: tl.constexpr):
        """Split s's state of rows (tok, head) into part_ptr: fp32 [T, Hq, n_splits, HEAD_DIM + 2] (acc, m, l)."""
        row = part_ptr + ((tok * n_heads + head) * n_splits + s) * (HEAD_DIM + 2)
        tl.store(row[:, None] + d[None, :], acc, mask=ok[:, None] & (d < HEAD_DIM)[None, :])
        tl.store(row + HEAD_DIM, m, mask=ok)
        tl.store(row + HEAD_DIM + 1, l, mask=ok)

    @triton.jit
    def _key_tiles(first_pos, last_pos, window, BK: tl.constexpr, WINDOWED: tl.constexpr):
        """Key tiles of a query tile whose rows sit at positions first_pos..last_pos -> (first: the first tile
        holding a key of the first row's window, full_lo .. n_full: tiles inside every row's window, n_end: one
        past the last row's keys)."""
        n_full = (first_pos + 1) // BK
        n_end = tl.cdiv(last_pos + 1, BK)
        if WINDOWED:
            first = tl.maximum(first_pos - window + 1, 0) // BK
            full_lo = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BK)
        else:
            first = n_full * 0
            full_lo = first
        return first, full_lo, n_full, n_end

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, part_ptr, cu_q_ptr, seqlens_k_ptr, block_table_ptr, kv_offsets_ptr,
        num_seqs, block_size, window, qk_scale_log2,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_bt,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
        ST: tl.constexpr, MULTI: tl.constexpr, WRITE_LSE: tl.constexpr, IEEE: tl.constexpr, PACK: tl.constexpr,
        SPLIT: tl.constexpr, WINDOWED: tl.constexpr,
    ):
        # PACK (engine): the tile's BQ rows are BQ // GROUP query positions x the GROUP q heads of kv head
        # program_id(1), so one program reads its K/V once for the whole group. Otherwise: BQ positions of q head
        # program_id(1). Either way each row runs the same [BQ, BK] dots and the same key tiles in the same order.
        QP: tl.constexpr = BQ // GROUP if PACK else BQ
        b, q_begin, q_len, tile_start = _seq_tile(cu_q_ptr, tl.program_id(0), num_seqs, QP)
        if tile_start >= q_len:
            return
        ctx_len = tl.load(seqlens_k_ptr + b)
        kv_off = tl.load(kv_offsets_ptr + b).to(tl.int64)
        table_row = block_table_ptr + b * stride_bt
        head, kv_head, rows = _tile_heads(tile_start, GROUP, BQ, PACK)
        n_heads = tl.num_programs(1) * GROUP if PACK else tl.num_programs(1)
        row_ok = rows < q_len
        q_pos = ctx_len - q_len + rows
        d = tl.arange(0, HEAD_PAD)
        q_tok = (q_begin + rows).to(tl.int64)
        q = _load_tile(q_ptr + q_tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :], row_ok, d, True,
                       HEAD_DIM, HEAD_PAD)
        first, full_lo, n_full, n_end = _key_tiles(ctx_len - q_len + tile_start,
                                                   ctx_len - q_len + tl.minimum(tile_start + QP, q_len) - 1, window,
                                                   BK, WINDOWED)
        if SPLIT:  # one split per program (decode); `_combine_splits_kernel` folds the partial states
            s = tl.program_id(2)
            if (s * ST < n_end) & (s * ST + ST > first):
                acc, m, l = _run_split(q, s, first, full_lo, n_full, n_end, k_ptr, v_ptr, table_row, kv_off, kv_head,
                                       ctx_len, q_pos, block_size, window, qk_scale_log2, stride_kt, stride_kh,
                                       stride_vt, stride_vh, HEAD_DIM, HEAD_PAD, BQ, BK, ST, WINDOWED, IEEE)
                _store_split(part_ptr, acc, m, l, q_tok, head, s, tl.num_programs(2), n_heads, row_ok, d, HEAD_DIM)
            return
        s0 = first // ST  # splits before the first row's window: exact no-ops, skipped
        acc, m, l = _run_split(q, s0, first, full_lo, n_full, n_end, k_ptr, v_ptr, table_row, kv_off, kv_head,
                               ctx_len, q_pos, block_size, window, qk_scale_log2, stride_kt, stride_kh,
                               stride_vt, stride_vh, HEAD_DIM, HEAD_PAD, BQ, BK, ST, WINDOWED, IEEE)
        for s in range(s0 + 1, tl.cdiv(n_end, ST) if MULTI else 1):  # MULTI=False: every context is one split
            acc_s, m_s, l_s = _run_split(q, s, first, full_lo, n_full, n_end, k_ptr, v_ptr, table_row, kv_off, kv_head,
                                         ctx_len, q_pos, block_size, window, qk_scale_log2, stride_kt, stride_kh,
                                         stride_vt, stride_vh, HEAD_DIM, HEAD_PAD, BQ, BK, ST, WINDOWED, IEEE)
            acc, m, l = _fold_split(acc, m, l, acc_s, m_s, l_s)
        out = acc / l[:, None]
        tl.store(o_ptr + q_tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (d < HEAD_DIM)[None, :])
        if WRITE_LSE:  # natural-log logsumexp of the scaled scores, [T, Hq] contiguous
            lse = (m + tl.log2(l)) / _LOG2E
            tl.store(lse_ptr + q_tok * n_heads + head, lse, mask=row_ok)

    @triton.jit
    def _combine_splits_kernel(part_ptr, o_ptr, cu_q_ptr, seqlens_k_ptr, num_seqs, n_splits, window, stride_ot,
                               stride_oh, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, KEYS: tl.constexpr,
                               WINDOWED: tl.constexpr):
        """One program per (query token, q head): fold the row's splits that hold keys of its window, in key
        order, with `_fold_split`, as the forward kernel does in registers, then normalise."""
        b, q_begin, q_len, row = _seq_tile(cu_q_ptr, tl.program_id(0), num_seqs, 1)
        if row >= q_len:
            return
        head = tl.program_id(1)
        tok = (q_begin + row).to(tl.int64)
        pos = tl.load(seqlens_k_ptr + b) - q_len + row
        n = pos // KEYS + 1  # splits holding keys 0..position
        s0 = tl.maximum(pos - window + 1, 0) // KEYS if WINDOWED else 0 * n
        d = tl.arange(0, HEAD_PAD)
        d_ok = d < HEAD_DIM
        one = tl.arange(0, 1)
        rec = part_ptr + ((tok * tl.num_programs(1) + head) * n_splits + s0) * (HEAD_DIM + 2)
        acc = tl.load(rec + d, mask=d_ok, other=0.0)[None, :]
        m = tl.load(rec + HEAD_DIM + one)
        l = tl.load(rec + HEAD_DIM + 1 + one)
        for s in range(1, n - s0):
            rec_s = rec + s * (HEAD_DIM + 2)
            acc, m, l = _fold_split(acc, m, l, tl.load(rec_s + d, mask=d_ok, other=0.0)[None, :],
                                    tl.load(rec_s + HEAD_DIM + one), tl.load(rec_s + HEAD_DIM + 1 + one))
        out = acc / l[:, None]
        tl.store(o_ptr + tok * stride_ot + head * stride_oh + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=d_ok[None, :])


def attention_forward_triton(q, k, v, cu_q, seqlens_k, block_table, kv_offsets, block_size, scale, with_lse,
                             pack: bool = False, n_splits: int = 0, max_keys: int | None = None,
                             window: int | None = None):
    """-> (out [T, Hq, D] in q.dtype, fp32 logsumexp [T, Hq] or None); no host sync. `pack` (the engine): a tile
    holds `fwd_tile` rows // group positions x the group's q heads, so K/V are read once per kv head (decode
    reads 1/group of the bytes); each row's arithmetic is unchanged (tested: engine vs trainer torch.equal).
    `n_splits` > 0 (decode at small batch): run each row's KV_SPLIT-key splits as parallel programs, n_splits per
    tile (a host bound: splits of the longest context possible; splits before a row's window exit at once), and
    fold them in `_combine_splits_kernel`; the same bits as the in-kernel fold (tested). Not with `with_lse`.
    `max_keys` <= KV_SPLIT (a host bound on every context, from validated metadata): one split, so the kernel is
    compiled without the fold (fewer registers). `window`: each query sees its last `window` keys (None: all)."""
    require_triton("attention")
    t, hq, d = q.shape
    group = hq // k.shape[1]
    block_q, block_k, warps = fwd_tile(q.dtype, d)
    pack = pack and group > 1 and block_q % group == 0
    num_seqs = seqlens_k.shape[0]
    out = torch.empty_like(q)
    lse = torch.empty((t, hq), device=q.device, dtype=torch.float32) if with_lse else out
    if t == 0:
        return out, (lse if with_lse else None)
    positions = block_q // group if pack else block_q
    grid = (t // positions + num_seqs, k.shape[1] if pack else hq)  # >= sum(ceil(q_len / positions)); no host sync
    part = out
    if n_splits:
        assert not with_lse, "the split path writes no logsumexp"
        part = torch.empty((t, hq, n_splits, d + 2), device=q.device, dtype=torch.float32)
        grid = grid + (n_splits,)
    pad, windowed = padded_head_dim(d), window is not None
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, part, cu_q, seqlens_k, block_table, kv_offsets,
        num_seqs, block_size, window if windowed else 0, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=group, HEAD_DIM=d, HEAD_PAD=pad, BQ=block_q, BK=block_k, ST=KV_SPLIT // block_k,
        MULTI=max_keys is None or max_keys > KV_SPLIT, WRITE_LSE=with_lse, IEEE=q.dtype == torch.float32,
        PACK=pack, SPLIT=n_splits > 0, WINDOWED=windowed, num_warps=warps, num_stages=FWD_STAGES,
    )
    if n_splits:
        _combine_splits_kernel[(t + num_seqs, hq)](part, out, cu_q, seqlens_k, num_seqs, n_splits,
                                                   window if windowed else 0, out.stride(0), out.stride(1),
                                                   HEAD_DIM=d, HEAD_PAD=pad, KEYS=KV_SPLIT, WINDOWED=windowed,
                                                   num_warps=1)
    return out, (lse if with_lse else None)
