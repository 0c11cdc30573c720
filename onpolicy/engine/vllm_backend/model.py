"""OnpolicyForCausalLM: onpolicy's CausalLM as a vLLM out-of-tree model, attending over vLLM's paged KV cache.

vLLM owns scheduling, block allocation, prefix caching and chunked prefill; every op a logprob depends on is
ours. Each layer has a vLLM `Attention` module only so that vLLM sizes and allocates its KV cache; its own
kernel never runs. Per forward: the cached K/V of every scheduled sequence is gathered (a pure copy) from vLLM's
per-layer block view [blocks, kv_heads, block_size, >= 2 * head_dim] (K in channels :D, V in D:2D -- only this
module reads or writes the cache) into a slot-layout scratch cache, one contiguous region per sequence; our
unmodified `CausalLM.forward` runs on it with training-style metadata (kv_offsets = region starts, block
table = arange, block size 16) and writes the new tokens' K/V there; they are then scattered into vLLM's
blocks at vLLM's slot_mapping. Cost: the scratch holds one more copy of the step's K/V (all layers at once),
and each step copies it in; a custom vLLM attention backend with our slot layout would avoid both.
`compute_logits` only hands the hidden rows to the logits processor (sampler.py), which computes the real
logits, samples and scores.
Left out: tensor/pipeline parallelism, CUDA graphs and torch.compile (run with enforce_eager), loading weights
from disk (`load_format="dummy"`, then the adapter copies the trainer's weights in).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from onpolicy.engine.vllm_backend.channel import channel_id, get_channel
from onpolicy.model.metadata import TRAINING_BLOCK_SIZE, AttentionMetadata
from onpolicy.model.transformer import CausalLM

ARCHITECTURE = "OnpolicyForCausalLM"
SCRATCH_ALIGN = 16  # scratch region per sequence: its longest context rounded up to this (any value works)


class OnpolicyForCausalLM(nn.Module):
    def __init__(self, *, vllm_config, prefix: str = ""):
        from vllm.model_executor.layers.attention import Attention

        super().__init__()
        self.channel = get_channel(channel_id(vllm_config.model_config.hf_config))
        cfg = self.channel.model_config
        self.inner = CausalLM(cfg, init=False)
        base = f"{prefix}.layers" if prefix else "layers"
        self.attn_names = [f"{base}.{i}.attn" for i in range(cfg.num_hidden_layers)]
        self.attn = nn.ModuleList(
            Attention(cfg.num_attention_heads, cfg.head_dim, cfg.head_dim ** -0.5, num_kv_heads=cfg.num_key_value_heads,
                      cache_config=vllm_config.cache_config, prefix=name)
            for name in self.attn_names)
        self.channel.model = self.inner

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.inner.model.embed_tokens.weight)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds=None, **kwargs) -> torch.Tensor:
        from vllm.forward_context import get_forward_context

        ctx = get_forward_context()
        out = torch.zeros(input_ids.shape[0], self.inner.config.hidden_size,
                          dtype=self.inner.model.embed_tokens.weight.dtype, device=input_ids.device)
        if ctx.attn_metadata is None:  # vLLM's profiling / warm-up run: nothing to cache
            return out
        md = ctx.attn_metadata[self.attn_names[0]]
        n = int(md.num_actual_tokens)
        views = [ctx.no_compile_layers[name].kv_cache for name in self.attn_names]
        if views[0].dim() != 4 or views[0].shape[-1] < 2 * self.inner.config.head_dim:
            raise RuntimeError(f"OnpolicyForCausalLM: vLLM's per-layer KV view must be [blocks, kv_heads, block_size, "
                               f">= 2 * head_dim], got {tuple(views[0].shape)}")
        plan = _plan(md, views[0].shape[2], n)
        scratch = [_gather(v, plan, self.inner.config.head_dim) for v in views]
        hidden = self.inner(input_ids[:n].long(), positions[:n].long(), plan["meta"], scratch)
        for v, (k_s, v_s) in zip(views, scratch):
            _scatter(v, plan, k_s, v_s, self.inner.config.head_dim)
        out[:n] = hidden
        self._count(plan, n)
        return out

    def _count(self, plan: dict, n: int) -> None:
        stats = self.channel.stats
        stats["steps"] += 1
        stats["forward_tokens"] += n
        stats["prefill_cached_tokens"] += int(plan["cached"][plan["q_lens"] > 1].sum())

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Stash the rows for the logits processor; the logits it starts from are zeros (it masks them)."""
        self.channel.hidden = hidden_states
        return torch.zeros(hidden_states.shape[0], self.inner.config.vocab_size, dtype=torch.float32,
                           device=hidden_states.device)

    def load_weights(self, weights) -> set[str]:
        raise RuntimeError("OnpolicyForCausalLM: weights come from the trainer in process; use load_format='dummy'")


def _plan(md, block_size: int, n: int) -> dict:
    """Index tensors shared by every layer: where each cached token is in vLLM's blocks and in the scratch."""
    dev = md.query_start_loc.device
    qsl = md.query_start_loc.long()
    seq_lens = md.seq_lens.long()
    b = seq_lens.numel()
    q_lens = qsl[1:] - qsl[:-1]
    cached = seq_lens - q_lens
    region = -(-int(seq_lens.max()) // SCRATCH_ALIGN) * SCRATCH_ALIGN  # scratch slots per sequence
    starts = torch.arange(b, device=dev) * region
    # cached tokens: (sequence, position) pairs, sequence-major
    seq_of = torch.repeat_interleave(torch.arange(b, device=dev), cached)
    pos = torch.arange(seq_of.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(cached, 0) - cached, cached)
    blocks = md.block_table.long()[seq_of, pos // block_size]
    # new tokens: scratch slot = region start + position
    new_seq = torch.repeat_interleave(torch.arange(b, device=dev), q_lens)[:n]
    new_pos = torch.arange(n, device=dev) - qsl[new_seq] + cached[new_seq]
    new_slots = starts[new_seq] + new_pos
    vslots = md.slot_mapping[:n].long()
    meta = AttentionMetadata(
        cu_seqlens_q=md.query_start_loc.to(torch.int32), seqlens_k=md.seq_lens.to(torch.int32),
        block_table=torch.zeros(b, 1, dtype=torch.int32, device=dev),  # one block per sequence, as in training
        kv_offsets=starts.to(torch.int32), block_size=TRAINING_BLOCK_SIZE, slot_mapping=new_slots)
    return {"meta": meta, "cached": cached, "q_lens": q_lens, "num_slots": b * region, "src_block": blocks,
            "src_off": pos % block_size,
            "dst": starts[seq_of] + pos, "new_slots": new_slots, "dst_block": vslots // block_size,
            "dst_off": vslots % block_size}


def _gather(view: torch.Tensor, plan: dict, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scratch (k, v) [num_slots, kv_heads, D] holding every cached token of this step's sequences."""
    shape = (plan["num_slots"], view.shape[1], d)
    k = torch.zeros(shape, dtype=view.dtype, device=view.device)
    v = torch.zeros(shape, dtype=view.dtype, device=view.device)
    if plan["dst"].numel():
        rows = view[plan["src_block"], :, plan["src_off"]]           # [P, kv_heads, C]
        k[plan["dst"]] = rows[..., :d]
        v[plan["dst"]] = rows[..., d : 2 * d]
    return k, v


def _scatter(view: torch.Tensor, plan: dict, k: torch.Tensor, v: torch.Tensor, d: int) -> None:
    """Write this step's new K/V from the scratch into vLLM's blocks at vLLM's slot_mapping."""
    rows = torch.cat([k[plan["new_slots"]], v[plan["new_slots"]]], dim=-1)
    view[plan["dst_block"], :, plan["dst_off"], : 2 * d] = rows
