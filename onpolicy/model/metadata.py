"""AttentionMetadata: how the packed query tokens of one forward map onto K/V slots.

The engine builds it for paged prefill/decode (kv_offsets = 0, block_table = cache blocks, slot_mapping =
where each new token's k/v is written); the trainer uses `for_training` over packed sequences (the kernels'
`training_metadata`: one block per sequence, no cache). Built once per forward and validated once
(`validate`, called by `CausalLM.forward`); the kernels trust it in every layer.
Left out: anything scheduler specific (the engine owns that).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE, check_attention_metadata, training_metadata


@dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor           # int32 [B+1] query (new token) offsets in the packed batch
    seqlens_k: torch.Tensor              # int32 [B] context length of each sequence (cached + new)
    block_table: torch.Tensor            # int32 [B, max_blocks]
    kv_offsets: torch.Tensor             # int32 [B]
    block_size: int
    slot_mapping: torch.Tensor | None = None   # int64 [Tq] cache slot of each new token; None in training
    max_seqlen_k: int | None = None            # the longest context, set by `validate` (None: not validated)

    @classmethod
    def for_training(cls, cu_seqlens: torch.Tensor) -> "AttentionMetadata":
        """Metadata for packed fresh K/V: sequence b's keys are rows cu_seqlens[b]..cu_seqlens[b+1]. No host
        sync: the values are checked by `validate`."""
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("AttentionMetadata.for_training: cu_seqlens must be a 1-D tensor [B+1] with B >= 1")
        if cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"AttentionMetadata.for_training: cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
        cu = cu_seqlens.to(torch.int32)
        seqlens_k, table, offsets = training_metadata(cu)
        return cls(cu_seqlens_q=cu, seqlens_k=seqlens_k, block_table=table, kv_offsets=offsets,
                   block_size=TRAINING_BLOCK_SIZE)

    def validate(self, num_tokens: int) -> None:
        """Value checks for `num_tokens` packed queries (one host sync; skipped during CUDA-graph capture); sets
        `max_seqlen_k`, the kernels' hint (stays None during a capture: the graph replays longer contexts)."""
        self.max_seqlen_k = check_attention_metadata(self.cu_seqlens_q, self.seqlens_k, self.block_table,
                                                     self.block_size, num_tokens)
