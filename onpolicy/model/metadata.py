"""AttentionMetadata: how the packed query tokens of one forward map onto K/V slots.

The engine builds it for paged prefill/decode (kv_offsets = 0, block_table = cache blocks, slot_mapping =
where each new token's k/v is written); the trainer uses `for_training` over packed sequences (kv_offsets =
sequence starts, trivial block table, no cache). Left out: anything scheduler specific (the engine owns that).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TRAINING_BLOCK_SIZE = 16


@dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor           # int32 [B+1] query (new token) offsets in the packed batch
    seqlens_k: torch.Tensor              # int32 [B] context length of each sequence (cached + new)
    block_table: torch.Tensor            # int32 [B, max_blocks]
    kv_offsets: torch.Tensor             # int32 [B]
    block_size: int
    slot_mapping: torch.Tensor | None = None   # int64 [Tq] cache slot of each new token; None in training
    max_seqlen_q: int = 0

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens_q.numel() - 1

    @classmethod
    def for_training(cls, cu_seqlens: torch.Tensor, block_size: int = TRAINING_BLOCK_SIZE) -> "AttentionMetadata":
        """Metadata for packed fresh K/V: sequence b's keys are rows cu_seqlens[b]..cu_seqlens[b+1]."""
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("AttentionMetadata.for_training: cu_seqlens must be a 1-D tensor [B+1] with B >= 1")
        if cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"AttentionMetadata.for_training: cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"AttentionMetadata.for_training: block_size must be a positive int, got {block_size!r}")
        cu = cu_seqlens.to(torch.int32)
        lens = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or bool((lens < 0).any()):
            raise ValueError("AttentionMetadata.for_training: cu_seqlens must start at 0 and be non-decreasing")
        max_len = int(lens.max())
        max_blocks = max(1, -(-max_len // block_size))
        table = torch.arange(max_blocks, dtype=torch.int32, device=cu.device).repeat(lens.numel(), 1)
        return cls(cu_seqlens_q=cu, seqlens_k=lens.contiguous(), block_table=table,
                   kv_offsets=cu[:-1].contiguous(), block_size=block_size, slot_mapping=None,
                   max_seqlen_q=max_len)
