"""CUDA graphs for pure-decode steps (every sequence computes exactly one token and samples it).

A graph is captured lazily per (padded batch-size bucket, temperature, kernel mode); buckets are 1, 2, 4, 8,
then multiples of 16 up to max_num_seqs. With a temperature the graph holds the whole step: forward, LM head
(`model.logits`, once), the sampling kernel (`kernels.sample_plain`) and the reported logprob
(`kernels.logits_token_logprobs`, the same bits as the trainer's `token_logprobs`); a step whose rows share
one temperature and use no top-k / top-p replays it and reads back tokens and logprobs in one copy. Other
decode steps replay a forward-only graph (temperature None) and sample eagerly.
Inputs travel in two staging buffers (int64: ids, positions, slots, seeds, sample indices, output positions,
source rows; int32: seqlens then the block table), each one host-to-device copy per step into static device
buffers that the graphs read through views. The host buffers come in two sets used in turn, so with async
scheduling step n+1 is staged while step n's copies may still be in flight. A row whose `src` is >= 0 takes
its input id on the device from `prev_tokens[src]` -- the runner's `last_tokens`, where the runner stores each
launched step's tokens (read from this class's output) -- the async engine's token that the host has not read
yet. The graphs write nothing outside their own buffers: a replay's results are its returned output. Pad rows
compute a dummy greedy token: they write k/v to a private scratch slot past the paged cache (one per row) and
read block 0; their outputs are dropped. Every op is row-wise batch invariant in invariant mode, so a real
row's result equals eager (tested on GPU: graphs on vs off, torch.equal). A capture that fails disables
graphs (eager from then on, with a warning). Python's cyclic GC is paused during a capture (after one
collection): a dead cycle holding CUDA resources (an old engine's graphs or pinned buffers) freed mid-capture
invalidates it (`cudaErrorStreamCaptureInvalidated`). Graphs hold the parameters' and caches' addresses:
weights must be updated in place (optimizer steps, `load_state_dict` copy), not replaced. Left out: graphs for prefill / mixed steps, piecewise graphs.
"""
from __future__ import annotations

import contextlib
import gc
import warnings

import numpy as np
import torch

from onpolicy import kernels
from onpolicy.model.metadata import AttentionMetadata

_I64_ROWS = ("input_ids", "positions", "slot_mapping", "seeds", "sample_index", "out_positions", "src")


def bucket_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_num_seqs] + list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] < max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class DecodeGraphs:
    """The decode graphs of one ModelRunner: reads its model, caches, geometry and `last_tokens` (an input) once,
    at construction; owns the staging buffers and the captured graphs."""

    def __init__(self, runner):
        self.model, self.kv_caches, self.prev_tokens = runner.model, runner.kv_caches, runner.last_tokens
        self.device, self.block_size = runner.device, runner.block_size
        self.buckets = bucket_sizes(runner.config.max_num_seqs)
        n, dev = self.buckets[-1], runner.device
        self.max_bs, self.width = n, runner.max_blocks_per_seq
        pin = dev.type == "cuda"
        self.host_sets = [(torch.zeros((len(_I64_ROWS), n), dtype=torch.int64, pin_memory=pin),
                           torch.zeros(n + n * self.width, dtype=torch.int32, pin_memory=pin),
                           torch.ones(n, dtype=torch.bool, pin_memory=pin)) for _ in range(2)]
        self.host_i64, self.host_i32, self.host_greedy = self.host_sets[0]
        self.dev_i64 = torch.zeros_like(self.host_i64, device=dev)
        self.dev_i32 = torch.zeros_like(self.host_i32, device=dev)
        self.dev_greedy = torch.ones(n, dtype=torch.bool, device=dev)
        self.pad_slots = runner.scratch_slot_base + np.arange(n, dtype=np.int64)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.kv_offsets = torch.zeros(n, dtype=torch.int32, device=dev)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.disabled = False
        self.replays = 0

    def _row(self, name: str, bs: int) -> torch.Tensor:
        return self.dev_i64[_I64_ROWS.index(name), :bs]

    def _meta(self, bs: int) -> AttentionMetadata:
        n = self.max_bs
        table = self.dev_i32[n : n + bs * self.width].view(bs, self.width)
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: bs + 1], seqlens_k=self.dev_i32[:bs], block_table=table,
            kv_offsets=self.kv_offsets[:bs], block_size=self.block_size, slot_mapping=self._row("slot_mapping", bs))

    def _step(self, bs: int, temperature: float | None):
        """The captured work: hidden [bs, H], or fp64 [2, bs] (token ids; logprobs) with a temperature."""
        src = self._row("src", bs)
        ids = torch.where(src >= 0, self.prev_tokens[src.clamp(min=0)], self._row("input_ids", bs))
        hidden = self.model(ids, self._row("positions", bs), self._meta(bs), self.kv_caches)
        if temperature is None:
            return hidden
        logits = self.model.logits(hidden, temperature)
        tok = kernels.sample_plain(logits, self.dev_greedy[:bs], self._row("seeds", bs),
                                   self._row("sample_index", bs), self._row("out_positions", bs))
        # one fp64 [2, bs] output: ids < 2**53 and fp32 logprobs are exact in it, so one copy reads both back
        return torch.stack([tok.double(), self.model.logits_logprobs(logits, tok, temperature).double()])

    def _capture(self, bs: int, temperature: float | None):
        self._fill_pad(0)
        self._upload(bs)
        self._step(bs, temperature)  # eager warm-up: Triton compiles happen outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._step(bs, temperature)
        torch.cuda.synchronize()
        return graph, out

    def _fill_pad(self, start: int) -> None:
        """Pad rows start.. of the host staging: token 0 at position 0 into its own scratch slot, greedy."""
        i64 = self.host_i64.numpy()
        i64[:, start:] = 0
        i64[_I64_ROWS.index("slot_mapping"), start:] = self.pad_slots[start:]
        i64[_I64_ROWS.index("src"), start:] = -1
        self.host_i32.numpy()[start : self.max_bs] = 1
        self.host_greedy.numpy()[start:] = True

    def _upload(self, bs: int) -> None:
        n = self.max_bs
        self.dev_i64.copy_(self.host_i64, non_blocking=True)
        self.dev_i32[: n + bs * self.width].copy_(self.host_i32[: n + bs * self.width], non_blocking=True)
        self.dev_greedy.copy_(self.host_greedy, non_blocking=True)

    def stage(self, seqs, bs: int) -> None:
        """Write the step's inputs for sequences `seqs` (one new token each) into the next set of host staging
        buffers. `src` is each sequence's `pending_row` (-1: the host has its last token)."""
        self.host_sets.reverse()
        self.host_i64, self.host_i32, self.host_greedy = self.host_sets[0]
        b, bsz, n, w = len(seqs), self.block_size, self.max_bs, self.width
        pos = np.fromiter((s.num_tokens - 1 for s in seqs), np.int64, b)
        i64 = self.host_i64.numpy()
        i64[0, :b] = np.fromiter((s.token_ids[-1] for s in seqs), np.int64, b)
        i64[1, :b] = pos
        last_block = np.fromiter((s.block_table[p // bsz] for s, p in zip(seqs, pos.tolist())), np.int64, b)
        i64[2, :b] = last_block * bsz + pos % bsz
        i64[3, :b] = np.fromiter((s.seed for s in seqs), np.int64, b)
        i64[4, :b] = np.fromiter((s.index for s in seqs), np.int64, b)
        i64[5, :b] = np.fromiter((s.num_output for s in seqs), np.int64, b)
        i64[6, :b] = np.fromiter((s.pending_row for s in seqs), np.int64, b)
        i32 = self.host_i32.numpy()
        i32[:b] = pos + 1
        table = i32[n : n + bs * w].reshape(bs, w)
        for i, s in enumerate(seqs):
            table[i, : len(s.block_table)] = s.block_table
        table[b:, 0] = 0
        self.host_greedy.numpy()[:b] = np.fromiter((s.params.temperature == 0 for s in seqs), np.bool_, b)
        if bs > b:
            self._fill_pad(b)

    @staticmethod
    @contextlib.contextmanager
    def _gc_paused():
        """Collect once, then keep Python's cyclic GC off for the enclosed capture (torch's `graph` no longer
        collects by default)."""
        was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            yield
        finally:
            if was_enabled:
                gc.enable()

    def _entry(self, bs: int, temperature: float | None):
        key = (bs, temperature, kernels.is_invariant())
        entry = self.graphs.get(key)
        if entry is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # a step in flight may still read the staging buffers
            try:
                with self._gc_paused():
                    entry = self.graphs[key] = self._capture(bs, temperature)
            except Exception as exc:  # noqa: BLE001 -- any capture failure means: run eager
                self.disabled = True
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly")
                return None
        return entry

    def launch(self, seqs, temperature: float | None):
        """Replay the step for `seqs` (one new token each, in order) without waiting.
        With a temperature: fp64 [2, b] (token ids; logprobs) on the device; without: hidden [b, H]. Both
        are views of the graph's static output, valid until its next replay. None: the caller runs eager."""
        b = len(seqs)
        if self.disabled or b > self.max_bs or b == 0:
            return None
        bs = next(x for x in self.buckets if x >= b)
        entry = self._entry(bs, temperature)
        if entry is None:
            return None
        graph, out = entry
        self.stage(seqs, bs)
        self._upload(bs)
        graph.replay()
        self.replays += 1
        return out[:b] if temperature is None else out[:, :b]

    def run(self, seqs, temperature: float | None):
        """`launch`, then with a temperature (tokens, logprobs) on the host as lists (the step's one
        device-to-host copy and sync). None: the caller runs eager."""
        out = self.launch(seqs, temperature)
        if out is None or temperature is None:
            return out
        both = out.cpu()
        return both[0].long().tolist(), both[1].float().tolist()
