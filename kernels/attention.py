"""Causal GQA attention over the slot layout: one forward for training, chunked prefill and decode.

K/V live in slots `[num_slots, Hkv, D]`; key position p of sequence b sits in slot
`kv_offsets[b] + block_table[b, p // block_size] * block_size + p % block_size`. A paged cache uses
`kv_offsets = 0`; packed training K/V are one block per sequence (`training_metadata`: `kv_offsets =
cu_seqlens[:-1]`, `block_table = 0`, `block_size = TRAINING_BLOCK_SIZE`), so the same code reads both. Queries
of sequence b are its last `q_len` positions (causal). `window` (HF's sliding window): the query at position i
sees keys i - window < j <= i, so `window` keys including itself; None: every key up to i.

Invariance: every caller runs the same query tiles and reduces keys from position 0 upward in the same key
tiles (`attention_triton.py` on CUDA, in fixed 512-key splits folded in key order -- small decode grids run the
splits in parallel, `_decode_splits`; the same tiling in torch on CPU, without splits: `attention_cpu.py`); a
window only skips tiles and splits whose keys would add exact no-ops, so a row's bits depend on its own
position alone. head_dim: `HEAD_DIMS` (96 runs zero-padded to 128 on GPU). The
metadata's values are trusted here (no host sync per layer): `check_attention_metadata` validates them once, where they
are built (onpolicy.model validates once per forward). Backward (training only): `attention_varlen`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import check, check_same_device, check_tensor, is_invariant, use_triton
from onpolicy.kernels.attention_torch import attention_varlen_torch
from onpolicy.kernels.attention_cpu import attention_backward_cpu, attention_forward_cpu
from onpolicy.kernels.attention_bwd_triton import attention_backward_triton
from onpolicy.kernels.attention_kv_triton import kv_write_triton
from onpolicy.kernels.attention_triton import KV_SPLIT, attention_forward_triton

# Packed training K/V: each sequence is one block starting at its kv_offset (block_table is all 0). Any
# block_size >= the longest sequence gives slot = kv_offset + position; the kernels never tile by it.
TRAINING_BLOCK_SIZE = 1 << 30
_OP = "attention"
HEAD_DIMS = (64, 96, 128, 256)  # head_dims every path computes (tiles per (dtype, head_dim): `fwd_tile`)
# A decode step whose grid has fewer (sequence, kv head) programs than this -- 2 per SM of an H100 -- runs each
# row's 512-key splits as parallel programs (`attention_forward_triton(n_splits=...)`); larger grids fold the
# splits in the kernel. A schedule choice only: both give the same bits.
SPLIT_BELOW_PROGRAMS = 264


def attention_reference(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale=None,
                        window=None):
    """Plain torch, the `invariant_mode(False)` path: gather every sequence's K/V into a padded batch and run
    one `scaled_dot_product_attention` (CUDA: in the input dtype, as a usual stack does; CPU: fp32 math) with
    the causal (and `window`) mask. Not batch invariant; one host sync for the padded sizes."""
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
    if window is not None:
        mask = mask & (kpos[None, None, :] > qpos[:, :, None] - window)
    mask = mask | ~qvalid[:, :, None]  # padded query rows attend to everything (finite), then are dropped
    work = q.dtype if q.is_cuda else torch.float32
    qb = q[qidx].to(work).transpose(1, 2)  # [B, hq, max_q, d]
    kb = k[slots].to(work).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    vb = v[slots].to(work).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[:, None], scale=scale)
    out[qidx[qvalid]] = ob.transpose(1, 2)[qvalid].to(q.dtype)
    return out


def check_attention_args(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale) -> None:
    """Types, shapes, dtypes and devices (no host sync); the metadata's values: `check_attention_metadata`."""
    qkv = (("q", q), ("k", k), ("v", v))
    for name, t in qkv:
        check_tensor(_OP, name, t, (torch.float32, torch.bfloat16))
        check(t.dim() == 3, _OP, f"{name} must be 3-D [tokens, heads, head_dim], got shape {tuple(t.shape)}")
        check(t.stride(2) == 1, _OP, f"{name} must be contiguous in head_dim (stride 1), got stride {t.stride(2)}")
    check(k.dtype == q.dtype and v.dtype == q.dtype, _OP,
          f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check(q.shape[2] in HEAD_DIMS, _OP, f"head_dim must be one of {', '.join(map(str, HEAD_DIMS))}, got {q.shape[2]}")
    check(k.shape == v.shape, _OP, f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    check(k.shape[2] == q.shape[2], _OP, f"k head_dim {k.shape[2]} != q head_dim {q.shape[2]}")
    check(k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0, _OP,
          f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    meta = dict(cu_seqlens_q=cu_seqlens_q, seqlens_k=seqlens_k, block_table=block_table, kv_offsets=kv_offsets)
    for name, t in meta.items():
        check_tensor(_OP, name, t, (torch.int32,))
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


def check_window(window) -> None:
    """`window` is None (full causal) or a positive int (keys per query, itself included)."""
    check(window is None or (isinstance(window, int) and not isinstance(window, bool) and window > 0), _OP,
          f"window must be None or a positive int, got {window!r}")


def check_attention_metadata(cu_seqlens_q, seqlens_k, block_table, block_size: int, num_tokens: int) -> int | None:
    """Value checks of shape-checked metadata for `num_tokens` queries: one host sync (none, and no check,
    while a CUDA graph is being captured). Call it once where the metadata is built, not per layer.
    -> the longest context (seqlens_k's max; None while capturing): the kernels' `max_keys` hint."""
    n = seqlens_k.shape[0] if seqlens_k.dim() == 1 else -1
    check(n >= 0 and cu_seqlens_q.shape == (n + 1,) and block_table.dim() == 2, _OP,
          f"metadata shapes: cu_seqlens_q [B+1], seqlens_k [B], block_table [B, max_blocks]; got "
          f"{tuple(cu_seqlens_q.shape)}, {tuple(seqlens_k.shape)}, {tuple(block_table.shape)}")
    if cu_seqlens_q.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    both = torch.cat([cu_seqlens_q, seqlens_k]).tolist()  # one host sync for both
    cu, lens = both[: n + 1], both[n + 1 :]
    check(cu[0] == 0 and cu[-1] == num_tokens, _OP,
          f"cu_seqlens_q must start at 0 and end at q.shape[0]={num_tokens}, got {cu[0]}..{cu[-1]}")
    q_lens = [cu[i + 1] - cu[i] for i in range(n)]
    check(all(x >= 0 for x in q_lens), _OP, "cu_seqlens_q must be non-decreasing")
    check(all(ql <= kl for ql, kl in zip(q_lens, lens)), _OP,
          "every query count (cu_seqlens_q diff) must be <= its seqlens_k")
    need = max([-(-kl // block_size) for kl in lens] + [0])
    check(need <= block_table.shape[1], _OP,
          f"block_table too short: seqlens_k needs {need} blocks of {block_size}, table has {block_table.shape[1]}")
    return max(lens, default=0)


def training_metadata(cu_seqlens: torch.Tensor):
    """(seqlens_k, block_table, kv_offsets) of packed training K/V, block size TRAINING_BLOCK_SIZE; no host sync."""
    n = cu_seqlens.shape[0] - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    table = torch.zeros((n, 1), dtype=torch.int32, device=cu_seqlens.device)
    return lens, table, cu_seqlens[:-1].to(torch.int32).contiguous()


def attention(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale=None, max_keys=None,
              window=None):
    """Forward attention over slot-layout K/V (engine path; no autograd). Returns [Tq, Hq, D] in q.dtype.
    `max_keys`: the longest context, from `check_attention_metadata` (None: unknown); at most KV_SPLIT lets the
    GPU kernel drop its split-fold code (fewer registers; the same bits). `window`: sliding window (None: full)."""
    check_attention_args(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale)
    check_window(window)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    meta = (cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale)
    if not is_invariant() and not use_triton(q, k, v):
        return attention_reference(q, k, v, *meta, window=window)
    if use_triton(q, k, v):  # both modes on CUDA: the fastest paged kernel we have, no host sync (graph-capturable)
        return attention_forward_triton(q, k, v, *meta, False, pack=True,
                                        n_splits=_decode_splits(q, k, block_table, block_size), max_keys=max_keys,
                                        window=window)[0]
    return attention_forward_cpu(q, k, v, *meta, window=window)


def _decode_splits(q, k, block_table, block_size) -> int:
    """Parallel key splits for a decode-sized call (as many queries as sequences) whose grid would leave SMs idle:
    enough for the longest context the block table holds (host shapes only, no sync); 0 = fold in the kernel."""
    if q.shape[0] != block_table.shape[0] or q.shape[0] * k.shape[1] >= SPLIT_BELOW_PROGRAMS:
        return 0
    longest = min(block_table.shape[1] * block_size, k.shape[0])  # a context's slots are distinct
    splits = -(-longest // KV_SPLIT)
    return splits if splits > 1 else 0


def write_kv_cache(k_cache, v_cache, slot_mapping, k, v) -> None:
    """k_cache[slot_mapping] = k and v_cache[slot_mapping] = v for [T, Hkv, D] k/v and distinct int64 slots.
    CUDA: one Triton launch (a plain copy; torch's index_copy_ under deterministic algorithms sorts the
    indices, ~10 launches per layer). CPU, or rows that are not contiguous: index_copy_."""
    rows_ok = all(t.stride(2) == 1 and t.stride(1) == t.shape[2] for t in (k, v, k_cache, v_cache))
    if use_triton(k_cache, v_cache, slot_mapping, k, v) and rows_ok and k.dtype == k_cache.dtype == v.dtype:
        kv_write_triton(k_cache, v_cache, slot_mapping, k, v)
        return
    k_cache.index_copy_(0, slot_mapping, k)
    v_cache.index_copy_(0, slot_mapping, v)


class _AttentionVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, seqlens_k, table, offsets, scale, max_keys, window):
        meta = (cu_seqlens, seqlens_k, table, offsets, TRAINING_BLOCK_SIZE, scale)
        if use_triton(q, k, v):
            out, lse = attention_forward_triton(q, k, v, *meta, True, max_keys=max_keys, window=window)
        else:
            out, lse = attention_forward_cpu(q, k, v, *meta, window=window), None
        ctx.save_for_backward(q, k, v, out, lse if lse is not None else out, cu_seqlens)
        ctx.scale, ctx.window = scale, window
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        if use_triton(q, k, v):
            dq, dk, dv = attention_backward_triton(q, k, v, out, lse, do, cu_seqlens, ctx.scale, ctx.window)
        else:
            dq, dk, dv = attention_backward_cpu(q, k, v, do, cu_seqlens, ctx.scale, ctx.window)
        return dq, dk, dv, None, None, None, None, None, None, None


def attention_varlen(q, k, v, cu_seqlens, scale=None, metadata=None, max_keys=None, window=None):
    """Causal attention over packed sequences q/k/v [T, H, D], cu_seqlens int32 [B+1]; differentiable.

    `metadata`: `training_metadata(cu_seqlens)`, built once per forward by the caller (built here when None);
    `max_keys`: the longest sequence, from `check_attention_metadata` (None: unknown), as for `attention`;
    `window`: sliding window, as for `attention` (None: full causal)."""
    check_tensor(_OP, "cu_seqlens", cu_seqlens, (torch.int32,))
    check(cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 1, _OP,
          f"cu_seqlens must be 1-D [B+1], got shape {tuple(cu_seqlens.shape)}")
    for name, t in (("q", q), ("k", k)):
        check_tensor(_OP, name, t)
        check(t.dim() == 3, _OP, f"{name} must be 3-D [tokens, heads, head_dim], got shape {tuple(t.shape)}")
    check(k.shape[0] == q.shape[0], _OP, f"training k must have as many tokens as q ({q.shape[0]}), got {k.shape[0]}")
    meta = training_metadata(cu_seqlens) if metadata is None else metadata
    check_attention_args(q, k, v, cu_seqlens, *meta, TRAINING_BLOCK_SIZE, scale)
    check_window(window)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    if not is_invariant():
        return attention_varlen_torch(q, k, v, cu_seqlens, scale, window)
    return _AttentionVarlen.apply(q, k, v, cu_seqlens, *meta, scale, max_keys, window)
