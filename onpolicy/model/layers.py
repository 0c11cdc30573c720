"""The decoder's layers on `kernels/` ops: projections, norms, attention, MLP, and the three layer layouts.

Parameters mirror HF names except the fused `qkv_proj` and `gate_up_proj`; each carries a
`weight_loader(param, tensor, shard_id=None)` used by `loading.py`. What a family changes (biases, q/k norm,
norm placement and offset, layers without RoPE, windows, activation) comes from its `ModelConfig` /
`Architecture`.
A layer's MLP is `MLP` or, where `cfg.layer_is_moe(index)`, the sparse `moe.MoEMLP` (`mlp_for`).
Left out: dropout, MLP bias, logit soft-capping, tensor parallelism.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from onpolicy import kernels
from onpolicy.model.config import ModelConfig
from onpolicy.model.metadata import AttentionMetadata


def _default_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    if shard_id is not None:
        raise ValueError(f"weight_loader: this parameter is not fused; got shard_id {shard_id!r}")
    if tuple(loaded.shape) != tuple(param.shape):
        raise ValueError(f"weight_loader: checkpoint tensor has shape {tuple(loaded.shape)}, parameter expects {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(loaded)


def _fused_loader(shards: dict[str, tuple[int, int]]):
    """weight_loader for a parameter made of row blocks: shard_id -> (row offset, rows); shard_id None loads the
    whole fused tensor."""

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # a checkpoint that stores the projection fused (Phi-3), in our row order
            _default_loader(param, loaded)
            return
        if shard_id not in shards:
            raise ValueError(f"weight_loader: shard_id must be one of {list(shards)}, got {shard_id!r}")
        start, rows = shards[shard_id]
        if tuple(loaded.shape) != (rows,) + tuple(param.shape[1:]):
            raise ValueError(f"weight_loader: shard {shard_id!r} has shape {tuple(loaded.shape)}, expected "
                             f"{(rows,) + tuple(param.shape[1:])}")
        with torch.no_grad():
            param[start : start + rows].copy_(loaded)

    return load


def _param(shape, dtype, loader=_default_loader, fill=None) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype) if fill is None else torch.full(shape, fill, dtype=dtype))
    p.weight_loader = loader
    return p


class Linear(nn.Module):
    """y = kernels.linear(x, weight, bias); `shards` names the row blocks of a fused projection."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 shards: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        loader = _fused_loader(shards) if shards else _default_loader
        self.shards = shards
        self.weight = _param((out_features, in_features), dtype, loader)
        self.bias = _param((out_features,), dtype, loader, fill=0.0) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """kernels.rms_norm; `offset` (Gemma): scale by (1 + weight), the norm and the scale in fp32 (HF's maths),
    one rounding to x's dtype."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = _param((size,), dtype, fill=0.0 if offset else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            return kernels.rms_norm(x.float(), 1.0 + self.weight.float(), self.eps).to(x.dtype)
        return kernels.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, norm(h)) with h = residual + x: one `kernels.add_rms_norm` launch."""
        return kernels.add_rms_norm(x, residual, self.weight, self.eps)


def _shards(**sizes: int) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, rows in sizes.items():
        out[name] = (start, rows)
        start += rows
    return out


class Attention(nn.Module):
    """GQA attention. q/k norm per the family: "head" (each head's D values, fused with RoPE in
    `kernels.qk_norm_rope`), "full" (all heads' width, `kernels.rms_norm`, then `kernels.rope`), or none;
    layer `index` picks RoPE or none (SmolLM3's NoPE layers), its rope table (Gemma's local / global) and its
    sliding window (None: full causal)."""

    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        dt, d = cfg.torch_dtype, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.scale = 1.0 / math.sqrt(d) if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar ** -0.5
        self.use_rope = cfg.layer_uses_rope(index)
        self.rope_slot = cfg.layer_rope_slot(index)
        self.window = cfg.layer_window(index)
        self.qk_norm = cfg.arch.qk_norm
        offset = cfg.arch.norm_offset
        shards = _shards(q=self.n_heads * d, k=self.n_kv_heads * d, v=self.n_kv_heads * d)
        self.qkv_proj = Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv_heads) * d, cfg.qkv_bias, dt, shards)
        self.o_proj = Linear(self.n_heads * d, cfg.hidden_size, cfg.o_bias, dt)
        q_width, k_width = (d, d) if self.qk_norm == "head" else (self.n_heads * d, self.n_kv_heads * d)
        self.q_norm = RMSNorm(q_width, cfg.rms_norm_eps, dt, offset) if self.qk_norm != "none" else None
        self.k_norm = RMSNorm(k_width, cfg.rms_norm_eps, dt, offset) if self.qk_norm != "none" else None
        self.fused_norm_rope = self.use_rope and self.qk_norm != "full" and not offset

    def project(self, x, positions, rope_table):
        """x [T, hidden] -> q [T, Hq, D], k, v [T, Hkv, D] (contiguous), normed and rotated per the family."""
        qkv, t, d = self.qkv_proj(x), x.shape[0], self.head_dim
        if self.fused_norm_rope:
            norms = (None, None, 1e-6) if self.q_norm is None else (self.q_norm.weight, self.k_norm.weight,
                                                                     self.q_norm.eps)
            return kernels.qk_norm_rope(qkv, positions, rope_table, self.n_heads, self.n_kv_heads, *norms)
        q, k, v = qkv.split([self.n_heads * d, self.n_kv_heads * d, self.n_kv_heads * d], dim=-1)
        if self.qk_norm == "head":
            q, k = q.reshape(t, self.n_heads, d), k.reshape(t, self.n_kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.reshape(t, self.n_heads, d).contiguous(), k.reshape(t, self.n_kv_heads, d).contiguous()
        if self.use_rope:
            q, k = kernels.rope(q, positions, rope_table), kernels.rope(k, positions, rope_table)
        return q, k, v.reshape(t, self.n_kv_heads, d).contiguous()

    def forward(self, x, positions, rope_tables, meta: AttentionMetadata, kv_cache=None):
        t = x.shape[0]
        q, k, v = self.project(x, positions, rope_tables[self.rope_slot])
        extra = {} if self.window is None else {"window": self.window}
        if kv_cache is None:
            out = kernels.attention_varlen(q, k, v, meta.cu_seqlens_q, scale=self.scale,
                                           metadata=(meta.seqlens_k, meta.block_table, meta.kv_offsets),
                                           max_keys=meta.max_seqlen_k, **extra)
        else:
            k_cache, v_cache = kv_cache
            kernels.write_kv_cache(k_cache, v_cache, meta.slot_mapping, k, v)
            out = kernels.attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seqlens_k, meta.block_table,
                                    meta.kv_offsets, meta.block_size, scale=self.scale, max_keys=meta.max_seqlen_k,
                                    **extra)
        return self.o_proj(out.reshape(t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        i, dt = cfg.intermediate_size, cfg.torch_dtype
        self.intermediate_size = i
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * i, False, dt, _shards(gate=i, up=i))
        self.down_proj = Linear(i, cfg.hidden_size, False, dt)
        # the op's name, looked up at each call (so tools that wrap `kernels` ops see it)
        self.act_mul = "gelu_tanh_mul" if cfg.hidden_act == "gelu_pytorch_tanh" else "silu_mul"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gate/up stay strided row views of the fused projection: silu_mul reads them in place (no copies)
        gate, up = self.gate_up_proj(x).split([self.intermediate_size, self.intermediate_size], dim=-1)
        return self.down_proj(getattr(kernels, self.act_mul)(gate, up))


def mlp_for(cfg: ModelConfig, index: int) -> nn.Module:
    """Layer `index`'s MLP: the sparse MoE MLP where the config says, else the dense one."""
    if cfg.layer_is_moe(index):
        from onpolicy.model.moe import MoEMLP

        return MoEMLP(cfg)
    return MLP(cfg)


class DecoderLayer(nn.Module):
    """Pre-norm layer (Llama, Qwen, Mistral, SmolLM3): h + attn(norm(h)), then + mlp(norm(.))."""

    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype)
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype)
        self.mlp = mlp_for(cfg, index)

    def forward(self, h, delta, positions, rope_tables, meta, kv_cache=None):
        """Residual stream h plus the previous layer's un-added MLP output `delta` (None: h is complete) ->
        (h + delta + attention, this layer's MLP output): each residual add runs fused with the norm after it."""
        if delta is None:
            x = self.input_layernorm(h)
        else:
            h, x = self.input_layernorm.add_forward(delta, h)
        h, x = self.post_attention_layernorm.add_forward(self.self_attn(x, positions, rope_tables, meta, kv_cache), h)
        return h, self.mlp(x)


class PostNormDecoderLayer(nn.Module):
    """Post-norm layer (OLMo-2): h + norm(attn(h)), then + norm(mlp(.)); the adds are plain (elementwise) adds."""

    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype)
        self.mlp = mlp_for(cfg, index)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype)

    def forward(self, h, delta, positions, rope_tables, meta, kv_cache=None):
        """Same protocol as `DecoderLayer`; returns (complete h, None)."""
        if delta is not None:
            h = h + delta
        h = h + self.post_attention_layernorm(self.self_attn(h, positions, rope_tables, meta, kv_cache))
        return h + self.post_feedforward_layernorm(self.mlp(h)), None


class SandwichDecoderLayer(nn.Module):
    """Gemma-3 layer: h + norm(attn(norm(h))), then + norm(mlp(norm(.))) with (1 + w) norms; plain adds."""

    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype, cfg.arch.norm_offset)  # noqa: E731
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        self.self_attn = Attention(cfg, index)
        self.mlp = mlp_for(cfg, index)

    def forward(self, h, delta, positions, rope_tables, meta, kv_cache=None):
        """Same protocol as `DecoderLayer`; returns (complete h, None)."""
        if delta is not None:
            h = h + delta
        a = self.self_attn(self.input_layernorm(h), positions, rope_tables, meta, kv_cache)
        h = h + self.post_attention_layernorm(a)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h))), None


LAYERS = {"pre": DecoderLayer, "post": PostNormDecoderLayer, "sandwich": SandwichDecoderLayer}
