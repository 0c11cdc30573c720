"""Causal GQA attention over the slot layout: one forward kernel for training, chunked prefill and decode.

K/V live in slots `[num_slots, Hkv, D]`; key position p of sequence b sits in slot
`kv_offsets[b] + block_table[b, p // block_size] * block_size + p % block_size`. A paged cache uses
`kv_offsets = 0`; packed training K/V use `kv_offsets = cu_seqlens[:-1]` and `block_table[b, j] = j`, so the
same code reads both. Queries of sequence b are its last `q_len` positions (causal).

Invariance: every query row is computed in a tile of `GPU_BLOCK_Q` (CPU: `BLOCK_Q`) queries of one sequence
(padded, decode too), keys are reduced from position 0 upward in `BLOCK_K`-key tiles for every caller, masked
or unused slots load as 0 and score -inf so they add exact zeros, online softmax in fp32. No split-KV, no
atomics, one tile config per (dtype, D). CUDA: Triton. CPU: the same tiling in torch on fixed-shape bmm
chunks (`_attention_cpu`).
Left out: sliding windows, soft-capping, alibi, fp8 K/V, split-KV decode (not batch invariant).
Backward (training only) lives in `kernels/attention_backward.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from onpolicy.kernels._common import check, check_float, check_same_device, is_invariant, use_triton

BLOCK_Q = 16  # CPU path: queries per tile (one sequence per tile; decode pads)
# GPU kernel: queries per tile for every caller. Measured on the H100 (docs/invariance.md): 64 made causal
# prefill 1.3-1.8x faster but decode up to 1.75x slower (engine tok/s at batch 256: 10.8k vs 14.9k), so 16.
GPU_BLOCK_Q = 16
BLOCK_K = 64  # keys per tile, tiles start at key position 0
CPU_BMM_CHUNK = 32  # (tile, head) matrices per CPU bmm call, zero padded: every call has one shape
LOG2E = 1.4426950408889634
_OP = "attention"


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _find_seq(cu_ptr, pid, num_seqs, BLOCK: tl.constexpr):
    """Largest b with cu[b] // BLOCK + b <= pid (tile t of sequence b has id cu[b] // BLOCK + b + t)."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_ptr + mid) // BLOCK + mid
        if start <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_q_ptr, seqlens_k_ptr, block_table_ptr, kv_offsets_ptr,
    num_seqs, block_size, qk_scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
    WRITE_LSE: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    b = _find_seq(cu_q_ptr, pid, num_seqs, BQ)
    q_begin = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_begin
    tile_start = (pid - (q_begin // BQ + b)) * BQ
    if tile_start >= q_len:
        return
    ctx_len = tl.load(seqlens_k_ptr + b)
    kv_off = tl.load(kv_offsets_ptr + b).to(tl.int64)
    kv_head = head // GROUP

    rows = tile_start + tl.arange(0, BQ)
    row_ok = rows < q_len
    q_pos = ctx_len - q_len + rows
    d = tl.arange(0, HEAD_DIM)
    q_tok = (q_begin + rows).to(tl.int64)
    q_ptrs = q_ptr + q_tok[:, None] * stride_qt + head * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)

    m = tl.full([BQ], float("-inf"), tl.float32)
    l = tl.zeros([BQ], tl.float32)
    acc = tl.zeros([BQ, HEAD_DIM], tl.float32)
    last_pos = ctx_len - q_len + tl.minimum(tile_start + BQ, q_len)  # one past the tile's last query position
    for j in range(0, tl.cdiv(last_pos, BK)):
        k_pos = j * BK + tl.arange(0, BK)
        k_ok = k_pos < ctx_len
        blk = tl.load(block_table_ptr + b * stride_bt + k_pos // block_size, mask=k_ok, other=0)
        slot = kv_off + blk.to(tl.int64) * block_size + (k_pos % block_size)
        kv_mask = k_ok[:, None]
        kk = tl.load(k_ptr + slot[:, None] * stride_kt + kv_head * stride_kh + d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(kk), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kk))
        s = s * qk_scale_log2
        keep = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        vt = tl.load(v_ptr + slot[:, None] * stride_vt + kv_head * stride_vh + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None]
        if IEEE:
            acc = tl.dot(p.to(vt.dtype), vt, acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(vt.dtype), vt, acc)
        m = m_new
    out = acc / l[:, None]
    o_ptrs = o_ptr + q_tok[:, None] * stride_ot + head * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_LSE:  # natural-log logsumexp of the scaled scores, [T, Hq] contiguous
        lse = (m + tl.log2(l)) / 1.4426950408889634
        tl.store(lse_ptr + q_tok * tl.num_programs(1) + head, lse, mask=row_ok)


def _num_warps(d: int) -> int:
    return 4 if d <= 64 else 8


def _attention_triton(q, k, v, cu_q, seqlens_k, block_table, kv_offsets, block_size, scale, with_lse):
    t, hq, d = q.shape
    num_seqs = seqlens_k.shape[0]
    out = torch.empty_like(q)
    lse = torch.empty((t, hq), device=q.device, dtype=torch.float32) if with_lse else out
    if t == 0:
        return out, (lse if with_lse else None)
    grid = (t // GPU_BLOCK_Q + num_seqs, hq)  # upper bound on sum(ceil(q_len / GPU_BLOCK_Q)); no host sync
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, cu_q, seqlens_k, block_table, kv_offsets,
        num_seqs, block_size, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=hq // k.shape[1], HEAD_DIM=d, BQ=GPU_BLOCK_Q, BK=BLOCK_K,
        WRITE_LSE=with_lse, IEEE=q.dtype == torch.float32, num_warps=_num_warps(d), num_stages=2,
    )
    return out, (lse if with_lse else None)


# ----------------------------------------------------------------------------------------------- CPU path
def _tree_sum_last(x: torch.Tensor) -> torch.Tensor:
    """Sum over a power-of-two last dim by pairwise halving: a fixed order for every row and shape."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def _chunked_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bmm in calls of exactly CPU_BMM_CHUNK matrices (zero padded), so each matrix sees one fixed shape."""
    n = a.shape[0]
    pad = -n % CPU_BMM_CHUNK
    if pad:
        a = torch.cat([a, a.new_zeros((pad,) + a.shape[1:])])
        b = torch.cat([b, b.new_zeros((pad,) + b.shape[1:])])
    outs = [torch.bmm(a[i : i + CPU_BMM_CHUNK], b[i : i + CPU_BMM_CHUNK]) for i in range(0, n + pad, CPU_BMM_CHUNK)]
    return torch.cat(outs)[:n]


def _attention_cpu(q, k, v, cu_q, seqlens_k, block_table, kv_offsets, block_size, scale):
    """The GPU tiling in torch: all (query tile, head) pairs of the batch advance together, key tile by tile."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    cu, lens, offs = cu_q.tolist(), seqlens_k.tolist(), kv_offsets.tolist()
    items = [(b, s) for b in range(len(lens)) for s in range(0, cu[b + 1] - cu[b], BLOCK_Q)]
    out = torch.empty_like(q)
    if not items:
        return out
    ar_q, ar_k = torch.arange(BLOCK_Q), torch.arange(BLOCK_K)
    item_b = torch.tensor([b for b, _ in items])
    q_len = torch.tensor([cu[b + 1] - cu[b] for b, _ in items])
    rows = torch.tensor([s for _, s in items])[:, None] + ar_q  # [W, BQ] row within the sequence's queries
    row_ok = rows < q_len[:, None]
    tok = torch.where(row_ok, torch.tensor([cu[b] for b, _ in items])[:, None] + rows, 0)
    ctx = torch.tensor(lens)[item_b]
    q_pos = ctx[:, None] - q_len[:, None] + rows
    n_tiles = (torch.minimum(q_pos.masked_fill(~row_ok, -1).amax(1) + 1, ctx) + BLOCK_K - 1) // BLOCK_K
    qf = torch.where(row_ok[:, :, None, None], q[tok].float(), 0.0).permute(0, 2, 1, 3)  # [W, Hq, BQ, D]
    w = len(items)
    m = torch.full((w, hq, BLOCK_Q), float("-inf"))
    l = torch.zeros((w, hq, BLOCK_Q))
    acc = torch.zeros((w, hq, BLOCK_Q, d))
    table, kv_off = block_table.long(), torch.tensor(offs)
    for j in range(int(n_tiles.max())):
        act = (n_tiles > j).nonzero().flatten()
        na = act.numel()
        k_pos = j * BLOCK_K + ar_k
        k_ok = k_pos[None, :] < ctx[act, None]  # [A, BK]
        blk = table[item_b[act, None], (k_pos // block_size).clamp(max=table.shape[1] - 1)[None, :]]
        slot = torch.where(k_ok, kv_off[item_b[act], None] + blk * block_size + k_pos % block_size, 0)
        kt = torch.where(k_ok[:, :, None, None], k[slot].float(), 0.0)  # [A, BK, Hkv, D]; NaN garbage -> 0
        vt = torch.where(k_ok[:, :, None, None], v[slot].float(), 0.0)
        kt = kt.repeat_interleave(hq // hkv, dim=2).permute(0, 2, 3, 1).reshape(na * hq, d, BLOCK_K)
        vt = vt.repeat_interleave(hq // hkv, dim=2).permute(0, 2, 1, 3).reshape(na * hq, BLOCK_K, d)
        s = _chunked_bmm(qf[act].reshape(na * hq, BLOCK_Q, d), kt).view(na, hq, BLOCK_Q, BLOCK_K) * scale
        keep = k_ok[:, None, :] & (k_pos[None, None, :] <= q_pos[act, :, None])  # [A, BQ, BK]
        s = torch.where(keep[:, None], s, float("-inf"))
        m_old = m[act]
        m_new = torch.maximum(m_old, s.amax(-1))
        alpha = torch.exp(m_old - m_new)
        p = torch.exp(s - m_new[..., None])
        l[act] = l[act] * alpha + _tree_sum_last(p)
        p_round = p.to(v.dtype).float()  # as the GPU: p rounded to v's dtype for p @ v
        pv = _chunked_bmm(p_round.reshape(na * hq, BLOCK_Q, BLOCK_K), vt).view(na, hq, BLOCK_Q, d)
        acc[act] = acc[act] * alpha[..., None] + pv
        m[act] = m_new
    res = (acc / l[..., None]).permute(0, 2, 1, 3).to(q.dtype)  # [W, BQ, Hq, D]
    out[tok[row_ok]] = res[row_ok]
    return out


# ----------------------------------------------------------------------------------------------- reference
def attention_reference(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale=None):
    """Plain torch, the `invariant_mode(False)` path: gather every sequence's K/V into a padded batch and run
    one `scaled_dot_product_attention` (CUDA: in the input dtype, as a usual stack does; CPU: fp32 math).
    Not batch invariant; one host sync for the padded sizes."""
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    n_seq = cu_seqlens_q.numel() - 1
    out = torch.zeros_like(q)
    if n_seq == 0 or q.shape[0] == 0:
        return out
    dev = q.device
    cu = cu_seqlens_q.long()
    q_len = cu[1:] - cu[:-1]
    k_len = seqlens_k.long()
    max_q, max_k = int(q_len.max()), max(int(k_len.max()), 1)
    kpos = torch.arange(max_k, device=dev)
    page = (kpos // block_size).clamp(max=block_table.shape[1] - 1)
    slots = kv_offsets.long()[:, None] + block_table.long()[:, page] * block_size + kpos % block_size
    kvalid = kpos[None, :] < k_len[:, None]
    slots = torch.where(kvalid, slots, torch.zeros_like(slots))
    qi = torch.arange(max_q, device=dev)
    qvalid = qi[None, :] < q_len[:, None]
    qidx = torch.where(qvalid, cu[:-1, None] + qi[None, :], torch.zeros_like(qi)[None, :])
    qpos = k_len[:, None] - q_len[:, None] + qi[None, :]
    mask = kvalid[:, None, :] & (kpos[None, None, :] <= qpos[:, :, None])  # [B, max_q, max_k]
    mask = mask | ~qvalid[:, :, None]  # padded query rows attend to everything (finite), then are dropped
    work = q.dtype if q.is_cuda else torch.float32
    qb = q[qidx].to(work).transpose(1, 2)  # [B, hq, max_q, d]
    kb = k[slots].to(work).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    vb = v[slots].to(work).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[:, None], scale=scale)
    out[qidx[qvalid]] = ob.transpose(1, 2)[qvalid].to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------- launchers
def check_attention_args(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale) -> None:
    """Shape/dtype/device checks, then value checks of the metadata (one host sync; skipped while a CUDA
    graph is being captured)."""
    qkv = (("q", q), ("k", k), ("v", v))
    for name, t in qkv:
        check_float(_OP, name, t, (torch.float32, torch.bfloat16))
        check(t.dim() == 3, _OP, f"{name} must be 3-D [tokens, heads, head_dim], got shape {tuple(t.shape)}")
    check(k.dtype == q.dtype and v.dtype == q.dtype, _OP,
          f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check(q.shape[2] in (64, 128), _OP, f"head_dim must be 64 or 128, got {q.shape[2]}")
    check(k.shape == v.shape, _OP, f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    check(k.shape[2] == q.shape[2], _OP, f"k head_dim {k.shape[2]} != q head_dim {q.shape[2]}")
    check(k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0, _OP,
          f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    for name, t in qkv:
        check(t.stride(2) == 1, _OP, f"{name} must be contiguous in head_dim (stride 1), got stride {t.stride(2)}")
    meta = dict(cu_seqlens_q=cu_seqlens_q, seqlens_k=seqlens_k, block_table=block_table, kv_offsets=kv_offsets)
    for name, t in meta.items():
        check(isinstance(t, torch.Tensor) and t.dtype == torch.int32, _OP,
              f"{name} must be an int32 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    check_same_device(_OP, q=q, k=k, v=v, **meta)
    check(seqlens_k.dim() == 1, _OP, f"seqlens_k must be 1-D [B], got shape {tuple(seqlens_k.shape)}")
    n = seqlens_k.shape[0]
    check(cu_seqlens_q.shape == (n + 1,), _OP,
          f"cu_seqlens_q must have shape [B+1] = [{n + 1}], got {tuple(cu_seqlens_q.shape)}")
    check(kv_offsets.shape == (n,), _OP, f"kv_offsets must have shape [B] = [{n}], got {tuple(kv_offsets.shape)}")
    check(block_table.dim() == 2 and block_table.shape[0] == n and block_table.shape[1] > 0, _OP,
          f"block_table must have shape [B={n}, max_blocks>0], got {tuple(block_table.shape)}")
    check(block_table.stride(1) == 1, _OP, "block_table must be contiguous along its last dim")
    check(isinstance(block_size, int) and block_size > 0, _OP, f"block_size must be a positive int, got {block_size!r}")
    check(scale is None or (isinstance(scale, (int, float)) and scale > 0), _OP,
          f"scale must be None or a positive float, got {scale!r}")
    if q.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # value checks below need a host sync, not allowed while a CUDA graph is captured
    both = torch.cat([cu_seqlens_q, seqlens_k]).tolist()  # one host sync for both
    cu, lens = both[: n + 1], both[n + 1 :]
    check(cu[0] == 0 and cu[-1] == q.shape[0], _OP,
          f"cu_seqlens_q must start at 0 and end at q.shape[0]={q.shape[0]}, got {cu[0]}..{cu[-1]}")
    q_lens = [cu[i + 1] - cu[i] for i in range(n)]
    check(all(x >= 0 for x in q_lens), _OP, "cu_seqlens_q must be non-decreasing")
    check(all(ql <= kl for ql, kl in zip(q_lens, lens)), _OP,
          "every query count (cu_seqlens_q diff) must be <= its seqlens_k")
    need = max([-(-kl // block_size) for kl in lens] + [0])
    check(need <= block_table.shape[1], _OP,
          f"block_table too short: seqlens_k needs {need} blocks of {block_size}, table has {block_table.shape[1]}")


def attention(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale=None):
    """Forward attention over slot-layout K/V (engine path; no autograd). Returns [Tq, Hq, D] in q.dtype."""
    check_attention_args(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    if not is_invariant():
        return attention_reference(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale)
    if use_triton(q, k, v):
        return _attention_triton(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale, False)[0]
    return _attention_cpu(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale)


def training_metadata(cu_seqlens: torch.Tensor, block_size: int = BLOCK_K):
    """(seqlens_k, block_table[b, j] = j, kv_offsets = cu_seqlens[:-1]) for packed K/V."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    max_len = int(lens.max()) if lens.numel() else 0
    max_blocks = max(1, -(-max_len // block_size))
    bt = torch.arange(max_blocks, device=cu_seqlens.device, dtype=torch.int32).repeat(lens.numel(), 1)
    return lens, bt.contiguous(), cu_seqlens[:-1].to(torch.int32).contiguous()


def attention_varlen(q, k, v, cu_seqlens, scale=None):
    """Training path: packed q/k/v [T, H, D] with cu_seqlens int32 [B+1]; autograd (see attention_backward)."""
    from onpolicy.kernels.attention_backward import attention_varlen as _varlen

    return _varlen(q, k, v, cu_seqlens, scale)
