"""Continuous batching: which sequences run in the next forward and how many of their tokens.

One uniform rule (as vLLM v1): a sequence has `token_ids` (prompt + generated) of which `num_computed` have
k/v in the cache; each step schedules up to `num_tokens - num_computed` of them -- a prefill chunk, a single
decode token, or the recompute of a preempted sequence -- within the step's token budget
(max_num_batched_tokens) and max_num_seqs. Running sequences go first (in arrival order), then waiting ones
(prefix-cache hits skip their cached blocks). When blocks run out, the most recently admitted running
sequence is preempted: its blocks are released, `num_computed` goes back to 0, and it re-queues at the front;
its generated tokens are recomputed as part of its prompt. A sequence samples only in a step that computes
its last token. Async scheduling (llm.py): a sequence's last token may be a placeholder (`pending_row` >= 0)
whose id is still on the device; it counts as a token, and a running sequence whose placeholder is its
max_tokens-th output is not scheduled again (it finishes when the token arrives). A sequence whose placeholder
turns out to stop it may have been preempted meanwhile: `finish` takes it from `waiting` then.
Left out: priorities, swap-out, speculative decoding.
"""
from __future__ import annotations

from collections import deque
from onpolicy.engine.kv_cache import BlockManager
from onpolicy.engine.params import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


class Sequence:
    """One sample of one request (a request with n=G has G sequences)."""

    def __init__(self, request_id: int, index: int, prompt_ids: list[int], params: SamplingParams, seed: int):
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.seed = seed
        self.status = WAITING
        self.num_computed = 0
        self.block_table: list[int] = []
        self.block_keys: list[bytes] = []
        self.num_registered = 0
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.num_preemptions = 0
        # incremental detokenisation state (see llm.py)
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0
        self.stop_checked = 0  # length of text already searched for stop strings
        self.pending_row = -1  # >= 0: token_ids[-1] is a placeholder, row pending_row of the step in flight
        self.stop_rule = None  # onpolicy.engine.stopping.StopRule, set by the engine when the request arrives

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class ScheduledChunk:
    """`num_tokens` tokens of `seq` computed this step from position `start` (= seq.num_computed before the
    step). `samples` is True when the chunk reaches the sequence's last token, so a new token is sampled; it is
    fixed when the chunk is made (the scheduler knows it then), not re-derived per read."""

    __slots__ = ("seq", "start", "num_tokens", "samples")

    def __init__(self, seq: Sequence, start: int, num_tokens: int, samples: bool | None = None):
        self.seq, self.start, self.num_tokens = seq, start, num_tokens
        self.samples = start + num_tokens == len(seq.token_ids) if samples is None else samples

    def __repr__(self) -> str:
        return f"ScheduledChunk(seq={self.seq.request_id}/{self.seq.index}, start={self.start}, " \
               f"num_tokens={self.num_tokens}, samples={self.samples})"


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.num_computed = 0
        seq.status = WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> list[ScheduledChunk]:
        chunks: list[ScheduledChunk] = []
        budget, preempted = self._schedule_running(chunks, self.max_num_batched_tokens)
        if not preempted:  # admit waiting sequences, not in a step that had to preempt: there is no room
            self._admit_waiting(chunks, budget)
        return chunks

    def _schedule_running(self, chunks: list[ScheduledChunk], budget: int) -> tuple[int, bool]:
        """Chunks for running sequences in order (preempting from the back when blocks run out) -> (budget
        left, whether it preempted). A decode chunk inside a block costs no BlockManager call."""
        preempted = False
        blocks, running, bs = self.blocks, self.running, self.blocks.block_size
        free, keyed = blocks.free, blocks.enable_prefix_caching
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            start, total = seq.num_computed, len(seq.token_ids)
            if seq.pending_row >= 0 and total - seq.num_prompt_tokens >= seq.params.max_tokens:
                i += 1  # its last token is in flight and is its last: nothing more to compute
                continue
            n = total - start if total - start < budget else budget
            end = start + n
            need = -(-end // bs) - len(seq.block_table)  # blocks_needed, inlined: > 0 only across a boundary
            while need > len(free):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                # allocate() has nothing to do without new blocks or newly filled blocks to key
                if need > 0 or (keyed and end // bs > seq.num_registered):
                    blocks.allocate(seq, n, max(need, 0))
                chunks.append(ScheduledChunk(seq, start, n, end == total))
                budget -= n
                i += 1
        return budget, preempted

    def _admit_waiting(self, chunks: list[ScheduledChunk], budget: int) -> None:
        """Admit waiting sequences in order (prefix-cache hits first) while budget, seats and blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.blocks.match_prefix(seq)
            n = min(seq.num_tokens - len(hits) * self.blocks.block_size, budget)
            if not self.blocks.can_admit(seq, hits, n):
                break
            self.waiting.popleft()
            self.blocks.admit(seq, hits)
            start = seq.num_computed
            self.blocks.allocate(seq, n)
            seq.status = RUNNING
            self.running.append(seq)
            chunks.append(ScheduledChunk(seq, start, n))
            budget -= n

    def advance(self, chunks: list[ScheduledChunk]) -> int:
        """Mark the chunks' tokens computed (after the forward); returns how many tokens that is."""
        total = 0
        for c in chunks:
            c.seq.num_computed = c.start + c.num_tokens
            total += c.num_tokens
        return total

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        seq.status = FINISHED
        self.blocks.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        else:  # preempted while its last token was in flight (async scheduling)
            self.waiting.remove(seq)
