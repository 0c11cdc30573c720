"""PLACEHOLDER: reference-only attention (slot layout, see docs/architecture.md)."""
import math

import torch


def _slots(b, n, block_table, kv_offsets, block_size, device):
    pos = torch.arange(n, device=device)
    return kv_offsets[b].long() + block_table[b, pos // block_size].long() * block_size + pos % block_size


def attention_reference(q, k, v, cu_seqlens_q, seqlens_k, block_table, kv_offsets, block_size, scale=None):
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    for b in range(cu_seqlens_q.numel() - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n = int(seqlens_k[b])
        if q1 == q0:
            continue
        s = _slots(b, n, block_table, kv_offsets, block_size, q.device)
        kb = k[s].float().repeat_interleave(hq // hkv, dim=1)  # [n, hq, d]
        vb = v[s].float().repeat_interleave(hq // hkv, dim=1)
        qb = q[q0:q1].float()
        scores = torch.einsum("qhd,khd->hqk", qb, kb) * scale
        qpos = torch.arange(n - (q1 - q0), n, device=q.device)
        mask = torch.arange(n, device=q.device)[None, :] <= qpos[:, None]
        scores = scores.masked_fill(~mask[None], float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vb).to(q.dtype)
    return out


def training_metadata(cu_seqlens, block_size=16):
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    max_blocks = int((int(lens.max()) + block_size - 1) // block_size) if lens.numel() else 1
    bt = torch.arange(max_blocks, device=cu_seqlens.device, dtype=torch.int32).repeat(lens.numel(), 1)
    return lens.to(torch.int32), bt, cu_seqlens[:-1].to(torch.int32)


def attention_varlen(q, k, v, cu_seqlens, scale=None):
    seqlens_k, bt, offs = training_metadata(cu_seqlens)
    return attention_reference(q, k, v, cu_seqlens, seqlens_k, bt, offs, 16, scale)


attention = attention_reference
