"""CUDA graphs for pure-decode steps (every sequence computes exactly one token).

A graph is captured lazily per padded batch-size bucket (1, 2, 4, 8, then multiples of 16 up to
max_num_seqs) over static input buffers; a step of b sequences replays the smallest bucket >= b after copying
its inputs in. Pad rows compute a dummy token: it writes its k/v to a private scratch slot past the paged
cache (one per row, so no duplicate writes) and reads block 0; its outputs are dropped. The captured kernels
are the eager ones at the bucket's shape, and every op is batch invariant, so a real row's result equals eager
(tested on GPU: graphs on vs off, torch.equal). Only in invariant mode: the torch reference attention reads
its padded sizes back to the host (a sync), which a capture cannot hold. A capture that fails disables graphs
(eager from then on, with a warning).
Graphs hold the parameters' and caches' addresses: weights must be updated in place (optimizer steps,
`load_state_dict` copy), not replaced. Left out: graphs for prefill / mixed steps, piecewise graphs.
"""
from __future__ import annotations

import warnings

import torch

from onpolicy.model.metadata import AttentionMetadata


def bucket_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_num_seqs] + list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] < max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class DecodeGraphs:
    def __init__(self, runner):
        self.runner = runner
        self.model = runner.model
        self.buckets = bucket_sizes(runner.config.max_num_seqs)
        n, dev = self.buckets[-1], runner.device
        self.max_bs = n
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.slot_mapping = runner.scratch_slot_base + torch.arange(n, dtype=torch.int64, device=dev)
        self.pad_slots = self.slot_mapping.clone()
        self.seqlens_k = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_table = torch.zeros((n, runner.max_blocks_per_seq), dtype=torch.int32, device=dev)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.kv_offsets = torch.zeros(n, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.disabled = False
        self.replays = 0

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: bs + 1], seqlens_k=self.seqlens_k[:bs],
            block_table=self.block_table[:bs], kv_offsets=self.kv_offsets[:bs],
            block_size=self.runner.block_size, slot_mapping=self.slot_mapping[:bs])

    def _reset_pad(self, start: int, stop: int) -> None:
        self.input_ids[start:stop] = 0
        self.positions[start:stop] = 0
        self.slot_mapping[start:stop] = self.pad_slots[start:stop]
        self.seqlens_k[start:stop] = 1
        self.block_table[start:stop] = 0

    def _capture(self, bs: int):
        self._reset_pad(0, bs)
        args = (self.input_ids[:bs], self.positions[:bs], self._meta(bs), self.runner.kv_caches)
        self.model(*args)  # eager warm-up: Triton compiles and autotune-free launches happen outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model(*args)
        torch.cuda.synchronize()
        self.graphs[bs] = (graph, out)
        return self.graphs[bs]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """hidden [b, H] by graph replay, or None (caller runs eager) when b is too big or graphs are off."""
        b = input_ids.shape[0]
        if self.disabled or b > self.max_bs:
            return None
        bs = next(x for x in self.buckets if x >= b)
        entry = self.graphs.get(bs)
        if entry is None:
            try:
                entry = self._capture(bs)
            except Exception as exc:  # noqa: BLE001 -- any capture failure means: run eager
                self.disabled = True
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly")
                return None
        graph, out = entry
        self.input_ids[:b].copy_(input_ids)
        self.positions[:b].copy_(positions)
        self.slot_mapping[:b].copy_(meta.slot_mapping)
        self.seqlens_k[:b].copy_(meta.seqlens_k)
        w = meta.block_table.shape[1]
        self.block_table[:b, :w].copy_(meta.block_table)
        if bs > b:
            self._reset_pad(b, bs)
        graph.replay()
        self.replays += 1
        return out[:b]
