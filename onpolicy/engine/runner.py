"""ModelRunner: packs one step's chunks into a single forward, then samples and scores the new tokens.

Per step: `input_ids`/`positions` [T] of every chunk back to back, `AttentionMetadata` (cu_seqlens_q,
seqlens_k = computed + new, block tables padded with block 0, kv_offsets = 0, slot_mapping of each new token),
one `model(...)` call, then `sampling.sample_hidden` for the sequences that sample: per effective temperature
the LM head once, tokens from those logits (one Triton kernel on CUDA, `sample_tokens`' bits), and the
reported logprob from the same logits with the trainer's reduction (`model.logits_logprobs` ==
`model.token_logprobs` bitwise), read back in one copy.
Batch-invariant or default ops follow the caller's `kernels.is_invariant()` (the trainer enters
`kernels.invariant_mode(cfg.trainer.invariant)` once per run). Pure-decode steps on CUDA replay captured CUDA
graphs in either mode (graphs.py; one set per mode).
Async scheduling: `launch` runs a plain pure-decode step (one token per row, one effective temperature, no
top-k / top-p) without waiting -- input ids of rows whose token is still a placeholder are read on the device
from `last_tokens` (the previous launch's tokens, which `launch` stores there), and the outputs are copied to
a pinned host buffer behind an event; `InFlight.result()` waits for them. Left out: tensor/pipeline parallelism.
"""
from __future__ import annotations

import torch

from onpolicy.engine.kv_cache import allocate_kv_caches, auto_num_blocks
from onpolicy.engine.params import EngineConfig
from onpolicy.engine import sampling
from onpolicy.engine.scheduler import ScheduledChunk
from onpolicy.model.metadata import AttentionMetadata


class ModelRunner:
    def __init__(self, model, config: EngineConfig):
        self.model = model
        self.config = config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        mc = model.config
        self.block_size = config.block_size
        self.num_blocks = config.num_blocks or auto_num_blocks(
            mc, config.block_size, config.max_num_seqs, self.dtype, self.device, config.kv_cache_memory_fraction)
        self.max_blocks_per_seq = -(-mc.max_position_embeddings // config.block_size)
        use_graphs = config.use_cuda_graphs and self.device.type == "cuda"  # one graph set per kernel mode
        self.scratch_slot_base = self.num_blocks * config.block_size
        extra = config.max_num_seqs if use_graphs else 0
        self.kv_caches = allocate_kv_caches(mc, self.num_blocks, config.block_size, self.dtype, self.device, extra)
        model.rope_table(self.device)  # build outside inference mode / before any graph capture
        # the last launched step's tokens, in row order (async scheduling reads its input ids from here)
        self.last_tokens = torch.zeros(config.max_num_seqs, dtype=torch.int64, device=self.device)
        pin = self.device.type == "cuda"
        self._host_out = [torch.zeros(2 * config.max_num_seqs, dtype=torch.float64, pin_memory=pin) for _ in range(2)]
        self.graphs = None
        if use_graphs:
            from onpolicy.engine.graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self)

    def build_inputs(self, chunks: list[ScheduledChunk]):
        """(input_ids int64 [T], positions int64 [T], AttentionMetadata) for the chunks, on the model's device.
        A sequence's placeholder token (`pending_row` >= 0) is read on the device from `last_tokens`."""
        ids, pos, slots, cu, seqlens, table, pending = [], [], [], [0], [], [], []
        bs = self.block_size
        width = max(1, max(len(c.seq.block_table) for c in chunks))
        for c in chunks:
            seq, end = c.seq, c.start + c.num_tokens
            ids.extend(seq.token_ids[c.start : end])
            pos.extend(range(c.start, end))
            bt = seq.block_table
            slots.extend(bt[p // bs] * bs + p % bs for p in range(c.start, end))
            cu.append(cu[-1] + c.num_tokens)
            if seq.pending_row >= 0 and end == len(seq.token_ids):  # async: the last id is still on the device
                pending.append((cu[-1] - 1, seq.pending_row))
            seqlens.append(end)
            table.append(bt + [0] * (width - len(bt)))
        dev = self.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seqlens_k=torch.tensor(seqlens, dtype=torch.int32, device=dev),
            block_table=torch.tensor(table, dtype=torch.int32, device=dev),
            kv_offsets=torch.zeros(len(chunks), dtype=torch.int32, device=dev),
            block_size=bs,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
        )
        ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        if pending:
            at, rows = torch.tensor(pending, dtype=torch.int64, device=dev).T
            ids[at] = self.last_tokens[rows]
        return ids, torch.tensor(pos, dtype=torch.int64, device=dev), meta

    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """hidden [T, H] of the packed step, eagerly."""
        return self.model(*self.build_inputs(chunks), self.kv_caches)

    @torch.inference_mode()
    def step(self, chunks: list[ScheduledChunk]) -> tuple[list[int], list[float | None]]:
        """Run one packed forward; return (token, logprob) for each chunk with `samples` True, in order."""
        seqs = [c.seq for c in chunks if c.samples]
        if self.graphs is not None and len(seqs) == len(chunks) and all(c.num_tokens == 1 for c in chunks):
            out = self._graph_step(seqs)
            if out is not None:
                return out
        hidden = self.forward(chunks)
        if not seqs:
            return [], []
        rows, end = [], 0
        for c in chunks:
            end += c.num_tokens
            if c.samples:
                rows.append(end - 1)
        # pure decode: every row samples, in order (no gather, no host-to-device copy)
        h_last = hidden if len(rows) == hidden.shape[0] else hidden[torch.tensor(rows, device=self.device)]
        return sampling.sample_hidden(self.model, h_last, seqs)

    def can_launch(self, chunks: list[ScheduledChunk], seqs) -> bool:
        """Whether `launch` takes the step: pure decode, every row sampling, one effective temperature and no
        top-k / top-p (`seqs`: the chunks' sequences that sample)."""
        if len(seqs) != len(chunks) or len(seqs) > len(self.last_tokens):
            return False
        temp = sampling.effective_temperature(seqs[0].params.temperature)
        return all(c.num_tokens == 1 for c in chunks) and not any(
            sampling.is_filtered(s.params) or sampling.effective_temperature(s.params.temperature) != temp
            for s in seqs)

    @torch.inference_mode()
    def launch(self, chunks: list[ScheduledChunk], seqs) -> "InFlight":
        """Start a step `can_launch` accepted; don't wait for it."""
        temp = sampling.effective_temperature(seqs[0].params.temperature)
        out = None if self.graphs is None else self.graphs.launch(seqs, temp)
        if out is None:  # one temperature group: rows in order
            out, _ = sampling.sample_hidden_on_device(self.model, self.forward(chunks), seqs)
        self.last_tokens[: len(seqs)].copy_(out[0])  # the next launch's device-side input ids (exact: ids < 2**53)
        self._host_out.reverse()
        host = self._host_out[0][: 2 * len(seqs)].view(2, len(seqs))  # contiguous: a true async copy
        host.copy_(out.contiguous(), non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return InFlight(host, event)

    def _graph_step(self, seqs):
        """Pure decode by graph replay: the whole step when every row shares one effective temperature and none
        uses top-k / top-p, else the forward alone and eager sampling. None: run eagerly."""
        temps = {sampling.effective_temperature(s.params.temperature) for s in seqs}
        plain = len(temps) == 1 and not any(sampling.is_filtered(s.params) for s in seqs)
        if plain:
            return self.graphs.run(seqs, temps.pop())
        hidden = self.graphs.run(seqs, None)
        return None if hidden is None else sampling.sample_hidden(self.model, hidden, seqs)


class InFlight:
    """A launched step's outputs: `host` fp64 [2, b] (token ids; logprobs), filled once `event` completes."""

    def __init__(self, host: torch.Tensor, event):
        self.host, self.event = host, event

    def result(self) -> tuple[list[int], list[float]]:
        """(token ids, logprobs) per row, waiting for the device."""
        if self.event is not None:
            self.event.synchronize()
        return self.host[0].long().tolist(), self.host[1].float().tolist()
