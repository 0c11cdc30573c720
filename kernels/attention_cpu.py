"""CPU path of `kernels.attention`: the GPU kernel's key tiling in torch, so CPU results are batch invariant too.

Forward: every query row is computed in a tile of `BLOCK_Q` queries of one sequence (decode pads), keys are
reduced upward in the GPU kernel's key tiles (`fwd_tile`, aligned at position 0), masked or unused slots add
exact zeros, online softmax in fp32 from a finite `EMPTY_MAX` running max; all (query tile, head) pairs of the
batch advance together, each matmul a torch.bmm call of one fixed shape (`CPU_BMM_CHUNK` matrices, zero padded)
and each row sum a fixed pairwise tree. A sliding window starts a query tile at the key tile of its first row's
first key (the tiles before it would leave every row's state exactly as it was). Backward (packed training
K/V): an fp32 recomputation per sequence in fixed query tiles with an explicit softmax backward (memory
linear in the sequence length); the same bits for any thread count, not batch invariant. Left out:
everything the Triton kernels leave out.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import cpu_row_tiled, tree_sum_last
from onpolicy.kernels.attention_triton import EMPTY_MAX, fwd_tile

BLOCK_Q = 16  # queries per tile (one sequence per tile; decode pads)
CPU_BMM_CHUNK = 32  # (tile, head) matrices per bmm call, zero padded: every call has one shape
BWD_BLOCK_Q = 128  # query rows per backward tile (fixed): the recomputed scores are [Hq, 128, keys seen]


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.bmm in calls of exactly CPU_BMM_CHUNK matrices, so each matrix sees one fixed shape."""
    return cpu_row_tiled(torch.bmm, a, b, tile=CPU_BMM_CHUNK)


def attention_forward_cpu(q, k, v, cu_q, seqlens_k, block_table, kv_offsets, block_size, scale, window=None):
    """The GPU tiling in torch: all (query tile, head) pairs of the batch advance together, key tile by tile."""
    t, hq, d = q.shape
    block_k = fwd_tile(q.dtype, d)[1]
    hkv = k.shape[1]
    cu, lens, offs = cu_q.tolist(), seqlens_k.tolist(), kv_offsets.tolist()
    items = [(b, s) for b in range(len(lens)) for s in range(0, cu[b + 1] - cu[b], BLOCK_Q)]
    out = torch.empty_like(q)
    if not items:
        return out
    ar_q, ar_k = torch.arange(BLOCK_Q), torch.arange(block_k)
    item_b = torch.tensor([b for b, _ in items])
    q_len = torch.tensor([cu[b + 1] - cu[b] for b, _ in items])
    rows = torch.tensor([s for _, s in items])[:, None] + ar_q  # [W, BQ] row within the sequence's queries
    row_ok = rows < q_len[:, None]
    tok = torch.where(row_ok, torch.tensor([cu[b] for b, _ in items])[:, None] + rows, 0)
    ctx = torch.tensor(lens)[item_b]
    q_pos = ctx[:, None] - q_len[:, None] + rows
    n_tiles = (torch.minimum(q_pos.masked_fill(~row_ok, -1).amax(1) + 1, ctx) + block_k - 1) // block_k
    first = torch.zeros_like(n_tiles) if window is None else (q_pos[:, 0] - window + 1).clamp(min=0) // block_k
    qf = torch.where(row_ok[:, :, None, None], q[tok].float(), 0.0).permute(0, 2, 1, 3)  # [W, Hq, BQ, D]
    w = len(items)
    m = torch.full((w, hq, BLOCK_Q), EMPTY_MAX)
    l = torch.zeros((w, hq, BLOCK_Q))
    acc = torch.zeros((w, hq, BLOCK_Q, d))
    table, kv_off = block_table.long(), torch.tensor(offs)
    for j in range(int(first.min()), int(n_tiles.max())):
        act = ((n_tiles > j) & (first <= j)).nonzero().flatten()
        na = act.numel()
        if na == 0:
            continue
        k_pos = j * block_k + ar_k
        k_ok = k_pos[None, :] < ctx[act, None]  # [A, BK]
        blk = table[item_b[act, None], (k_pos // block_size).clamp(max=table.shape[1] - 1)[None, :]]
        slot = torch.where(k_ok, kv_off[item_b[act], None] + blk * block_size + k_pos % block_size, 0)
        kt = torch.where(k_ok[:, :, None, None], k[slot].float(), 0.0)  # [A, BK, Hkv, D]; NaN garbage -> 0
        vt = torch.where(k_ok[:, :, None, None], v[slot].float(), 0.0)
        kt = kt.repeat_interleave(hq // hkv, dim=2).permute(0, 2, 3, 1).reshape(na * hq, d, block_k)
        vt = vt.repeat_interleave(hq // hkv, dim=2).permute(0, 2, 1, 3).reshape(na * hq, block_k, d)
        s = _bmm(qf[act].reshape(na * hq, BLOCK_Q, d), kt).view(na, hq, BLOCK_Q, block_k) * scale
        keep = k_ok[:, None, :] & (k_pos[None, None, :] <= q_pos[act, :, None])  # [A, BQ, BK]
        if window is not None:
            keep = keep & (k_pos[None, None, :] > q_pos[act, :, None] - window)
        s = torch.where(keep[:, None], s, float("-inf"))
        m_old = m[act]
        m_new = torch.maximum(m_old, s.amax(-1))
        alpha = torch.exp(m_old - m_new)
        p = torch.exp(s - m_new[..., None])
        l[act] = l[act] * alpha + tree_sum_last(p)
        p_round = p.to(v.dtype).float()  # as the GPU: p rounded to v's dtype for p @ v
        pv = _bmm(p_round.reshape(na * hq, BLOCK_Q, block_k), vt).view(na, hq, BLOCK_Q, d)
        acc[act] = acc[act] * alpha[..., None] + pv
        m[act] = m_new
    res = (acc / l[..., None]).permute(0, 2, 1, 3).to(q.dtype)  # [W, BQ, Hq, D]
    out[tok[row_ok]] = res[row_ok]
    return out


def _sum_groups(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """[n, hkv * group, d] -> [n, hkv, d]: the q heads of each kv head added in head order (fixed order)."""
    x = x.view(x.shape[0], hkv, -1, x.shape[2])
    out = x[:, :, 0]
    for g in range(1, x.shape[2]):
        out = out + x[:, :, g]
    return out


def _sequence_backward(q, k, v, do, scale, window):
    """fp32 (dq, dk, dv) of one causal sequence (keys of the last `window` positions; None: all): q/do [n, Hq, D],
    k/v [n, Hkv, D]. Query tiles of BWD_BLOCK_Q rows against the keys they see, so memory is O(n) per tile,
    never [n, n]; dk / dv add the tiles' parts in tile order."""
    n, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    qh, doh = (t.transpose(0, 1).contiguous() for t in (q, do))  # [Hq, n, D]
    kh, vh = (t.repeat_interleave(hq // hkv, dim=1).transpose(0, 1).contiguous() for t in (k, v))
    dq, dk, dv = torch.empty_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
    for q0 in range(0, n, BWD_BLOCK_Q):
        q1 = min(q0 + BWD_BLOCK_Q, n)
        k0 = 0 if window is None else max(0, q0 - window + 1)
        q_pos, k_pos = torch.arange(q0, q1)[:, None], torch.arange(k0, q1)[None, :]
        keep = k_pos <= q_pos
        if window is not None:
            keep = keep & (k_pos > q_pos - window)
        qt, dot, kt, vt = qh[:, q0:q1], doh[:, q0:q1], kh[:, k0:q1], vh[:, k0:q1]
        s = (torch.bmm(qt, kt.transpose(1, 2)) * scale).masked_fill(~keep, float("-inf"))  # [Hq, tile, keys]
        e = torch.exp(s - s.amax(-1, keepdim=True))
        p = e / tree_sum_last(e)[..., None]
        dp = torch.bmm(dot, vt.transpose(1, 2))
        ds = p * (dp - tree_sum_last(p * dp)[..., None])  # softmax backward with a fixed-order row sum
        dq[:, q0:q1] = torch.bmm(ds, kt) * scale
        dk[:, k0:q1] += torch.bmm(ds.transpose(1, 2), qt) * scale
        dv[:, k0:q1] += torch.bmm(p.transpose(1, 2), dot)
    dk, dv = (t.transpose(0, 1) for t in (dk, dv))  # [n, Hq, D]
    return dq.transpose(0, 1), _sum_groups(dk.contiguous(), hkv), _sum_groups(dv.contiguous(), hkv)


def attention_backward_cpu(q, k, v, do, cu_seqlens, scale, window=None):
    """(dq, dk, dv) of packed causal attention, recomputed per sequence in fp32.

    Same bits for any torch thread count: matmuls are torch.bmm (MKL GEMMs, measured thread invariant for a
    fixed shape), every other reduction is a max or a `tree_sum_last`; torch's softmax backward is not used
    (its row sums change with the thread count)."""
    cu = cu_seqlens.tolist()
    lens = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    parts = zip(*(q.float().split(lens), k.float().split(lens), v.float().split(lens), do.float().split(lens)))
    grads = [_sequence_backward(*p, scale, window) for n, p in zip(lens, parts) if n]
    if not grads:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    return tuple(torch.cat(g).to(t.dtype) for g, t in zip(zip(*grads), (q, k, v)))
