"""Partial rotary (only the first rotary_dim dims of a head rotate, HF pairs (i, i + rotary_dim / 2)) on a RoPE
kernel that pairs (i, i + head_dim / 2): the loader reorders each q and k head's dims once, so HF's rotated
halves land at the starts of our two halves and the unrotated dims fill the rest (the rope table gives them
cos 1, sin 0). q and k get the same order, so q . k -- and the attention output -- is unchanged; v is not
touched. Saving applies the inverse, so the checkpoint keeps HF's order.
Left out: per-head q/k norm weights (no family with partial rotary has them; such a config is refused).
"""
from __future__ import annotations

import torch


def rotary_order(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """int64 [head_dim]: our dim j holds HF's dim order[j]."""
    r, p = rotary_dim // 2, (head_dim - rotary_dim) // 2
    first = list(range(r)) + [rotary_dim + i for i in range(p)]
    second = [r + i for i in range(r)] + [rotary_dim + p + i for i in range(p)]
    return torch.tensor(first + second, dtype=torch.int64)


def _row_index(order: torch.Tensor, n_q: int, n_kv: int, head_dim: int) -> torch.Tensor:
    """Row gather index of the fused qkv projection: q and k heads reordered, v rows in place."""
    heads = torch.arange(n_q + n_kv)[:, None] * head_dim + order[None, :]
    v_rows = torch.arange((n_q + n_kv) * head_dim, (n_q + 2 * n_kv) * head_dim)
    return torch.cat([heads.reshape(-1), v_rows])


def qkv_row_index(config, inverse: bool = False) -> torch.Tensor:
    """Row gather index taking a fused qkv projection from HF's dim order to ours (`inverse`: back)."""
    order = rotary_order(config.head_dim, int(config.head_dim * config.partial_rotary_factor))
    if inverse:
        order = torch.argsort(order)
    return _row_index(order, config.num_attention_heads, config.num_key_value_heads, config.head_dim)


@torch.no_grad()
def to_our_order(model) -> None:
    """Reorder every layer's qkv_proj rows (weight and bias) in place, from HF's order to ours."""
    index = qkv_row_index(model.config)
    for layer in model.model.layers:
        proj = layer.self_attn.qkv_proj
        for p in (proj.weight, proj.bias):
            if p is not None:
                p.copy_(p[index.to(p.device)].clone())
