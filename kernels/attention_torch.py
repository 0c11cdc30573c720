"""Training attention in `invariant_mode(False)`: torch's fast defaults over packed sequences, for the comparison
stack -- flash varlen on CUDA (bf16/fp16, head_dim <= 256; a sliding window as flash's `window_size=(window - 1,
0)` where this torch's varlen API takes one), causal SDPA per sequence otherwise (fp32 on the CPU; a window as an
explicit [n, n] band mask per sequence). Never a padded [B, L, L] matrix. Not batch invariant (that is the point
of the comparison); one host sync for the sequence lengths. Left out: dropout.
"""
from __future__ import annotations

import inspect
import math

import torch


def _flash_varlen(q, k, v, cu_seqlens, max_len: int, scale: float, window: int | None):
    """torch.nn.attention.varlen.varlen_attn (flash, causal, differentiable) across its torch-version signatures;
    TypeError where this one cannot take the window."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:  # flash: (left, right) keys beside the query's own
        kwargs = {"window_size": (-1 if window is None else window - 1, 0)}
    elif window is None:
        kwargs = {"is_causal": True}
    else:
        raise TypeError("varlen_attn takes no window_size")
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    if "scale" in params:
        kwargs["scale"] = scale
    else:
        q = q * (scale * math.sqrt(q.shape[2]))
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


def attention_varlen_torch(q, k, v, cu_seqlens, scale: float, window: int | None = None):
    """Causal attention over packed q/k/v [T, H, D] with torch's fastest available kernels; differentiable.
    `window`: each query sees its last `window` keys (None: all)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[2] <= 256:
        try:
            return _flash_varlen(q, k, v, cu_seqlens, max(lens, default=0), scale, window)
        except (ImportError, TypeError):  # no varlen API in this torch build (or another signature)
            pass
    work = q.dtype if q.is_cuda else torch.float32
    outs = []
    for qb, kb, vb in zip(q.split(lens), k.split(lens), v.split(lens)):
        qb, kb, vb = (t.to(work).transpose(0, 1)[None] for t in (qb, kb, vb))
        if window is None:
            mask, causal = None, True
        else:  # key j visible from query i: i - window < j <= i
            n = qb.shape[2]
            mask, causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril().triu(1 - window), False
        ob = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=causal,
                                                              scale=scale, enable_gqa=True)
        outs.append(ob[0].transpose(0, 1).to(q.dtype))
    return torch.cat(outs) if outs else torch.zeros_like(q)
