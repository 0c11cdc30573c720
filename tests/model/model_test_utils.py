"""Helpers for tests/model: pack sequences, build paged-cache metadata, random HF models."""
from __future__ import annotations

import torch

from onpolicy.model import AttentionMetadata


def packed(seqs: list[list[int]], device="cpu"):
    """(input_ids, positions, training metadata) for sequences packed back to back."""
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64, device=device)
    pos = torch.tensor([p for s in seqs for p in range(len(s))], dtype=torch.int64, device=device)
    cu = torch.tensor([0] + [int(x) for x in torch.tensor([len(s) for s in seqs]).cumsum(0)], dtype=torch.int32)
    return ids, pos, AttentionMetadata.for_training(cu.to(device))


def engine_step(seqs, starts, ends, tables, block_size, device="cpu"):
    """Engine metadata for new tokens seqs[b][starts[b]:ends[b]] of each sequence (cache holds the rest)."""
    ids, pos, slots, cu = [], [], [], [0]
    for s, a, e, table in zip(seqs, starts, ends, tables):
        for p in range(a, e):
            ids.append(s[p])
            pos.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
        cu.append(cu[-1] + e - a)
    width = max(len(t) for t in tables)
    bt = torch.tensor([list(t) + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    i64 = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    meta = AttentionMetadata(
        cu_seqlens_q=i32(cu), seqlens_k=i32(ends), block_table=bt.to(device), kv_offsets=i32([0] * len(seqs)),
        block_size=block_size, slot_mapping=i64(slots))
    return i64(ids), i64(pos), meta


def empty_caches(model, num_slots):
    c = model.config
    shape = (num_slots, c.num_key_value_heads, c.head_dim)
    w = model.lm_head_weight
    return [(w.new_zeros(shape), w.new_zeros(shape)) for _ in range(c.num_hidden_layers)]


def run_engine(model, seqs, chunks, tables, block_size, num_slots):
    """Engine path over `chunks` = [(starts, ends), ...] steps (a sequence with start == end sits out);
    returns the hidden rows of every sequence's tokens, concatenated in packed order."""
    caches = empty_caches(model, num_slots)
    rows = [[None] * len(s) for s in seqs]
    with torch.inference_mode():
        for starts, ends in chunks:
            live = [b for b in range(len(seqs)) if ends[b] > starts[b]]
            if not live:
                continue
            ids, pos, meta = engine_step([seqs[b] for b in live], [starts[b] for b in live],
                                         [ends[b] for b in live], [tables[b] for b in live], block_size,
                                         model.lm_head_weight.device)
            h = model(ids, pos, meta, caches)
            i = 0
            for b in live:
                for p in range(starts[b], ends[b]):
                    rows[b][p] = h[i]
                    i += 1
    return torch.cat([torch.stack(r) for r in rows])


def random_hf_model(arch: str, tied: bool, seed: int = 0, **kw):
    """A small random transformers Qwen3/Llama model (fp32, eager attention), norms perturbed off 1."""
    import transformers

    torch.manual_seed(seed)
    kw.setdefault("head_dim", 64)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
                  tie_word_embeddings=tied, **kw)
    if arch == "qwen3":
        cfg = transformers.Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)
        cls = transformers.Qwen3ForCausalLM
    else:
        cfg = transformers.LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **common)
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms and biases: make them non-trivial so a swap would show
                p.add_(0.1 * torch.randn_like(p))
    return model
