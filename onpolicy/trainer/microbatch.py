"""Split one step's sequences into mini-batches (one optimizer step each) and micro-batches (one forward +
backward each, bounded by a token budget).

    schedule = update_schedule(num_seqs=len(seq_tokens), mini_batches=K, num_iterations=I)
    for upd in schedule:                          # I * K updates; upd.on_policy only for the very first
        for mb in plan_micro_batches(seq_tokens[upd.seqs], micro_batch_tokens):
            ...  # sequences upd.seqs.start + mb.start ... (whole sequences, packed order kept)

`seq_tokens[i]` is sequence i's prompt + completion token count (what its training forward processes).
Mini-batches are contiguous, equal-sized runs of sequences in rollout order (TRL's `steps_per_generation`,
verl's `ppo_mini_batch_size`); each is visited `num_iterations` times (TRL's `num_iterations`, PPO epochs),
iteration-major: [mb0, mb1, ..., mb0, mb1, ...]. Micro-batches are greedy: sequences are added in order
while the running token count stays <= `micro_batch_tokens`; a sequence longer than the budget is trained
alone in its own micro-batch (never dropped, never an error: a long completion must not stop a run; its
memory is the caller's to size -- `oversized` lists them). Left out: shuffling between iterations,
length-balanced (bin-packing) micro-batches, uneven mini-batches.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Update:
    """One optimizer step: sequences `seqs` (a range into the step's rollout order)."""
    index: int              # 0-based over the whole schedule
    iteration: int          # 0-based pass over the rollout batch
    mini_batch: int         # 0-based mini-batch within the pass
    seqs: range

    @property
    def on_policy(self) -> bool:
        """True for the first update only: the weights are still the sampler's, so ratio == 1 exactly."""
        return self.index == 0


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


def plan_micro_batches(seq_tokens, micro_batch_tokens: int | None) -> list[range]:
    """Consecutive ranges of sequence indices covering 0..len(seq_tokens)-1 in order, each holding at most
    `micro_batch_tokens` tokens unless it is a single sequence longer than that. None: one micro-batch."""
    counts = [int(n) for n in seq_tokens]
    if any(n < 1 for n in counts):
        raise ValueError("seq_tokens: every sequence needs >= 1 token (prompt + completion)")
    if not counts:
        return []
    if micro_batch_tokens is None:
        return [range(0, len(counts))]
    budget = _check_int("trainer.micro_batch_tokens", micro_batch_tokens, 1)
    out, start, used = [], 0, 0
    for i, n in enumerate(counts):
        if i > start and used + n > budget:
            out.append(range(start, i))
            start, used = i, 0
        used += n
    out.append(range(start, len(counts)))
    return out


def oversized(seq_tokens, micro_batch_tokens: int | None) -> list[int]:
    """Indices of sequences longer than the budget (each gets a micro-batch of its own)."""
    if micro_batch_tokens is None:
        return []
    return [i for i, n in enumerate(seq_tokens) if int(n) > micro_batch_tokens]


def mini_batch_ranges(num_seqs: int, mini_batches: int) -> list[range]:
    """`mini_batches` contiguous equal ranges of 0..num_seqs-1; `mini_batches` must divide `num_seqs`."""
    _check_int("num_seqs", num_seqs, 1)
    _check_int("trainer.mini_batches", mini_batches, 1)
    if num_seqs % mini_batches:
        raise ValueError(f"trainer.mini_batches ({mini_batches}) must divide the sequences per step "
                         f"({num_seqs} = prompts_per_step * num_generations)")
    size = num_seqs // mini_batches
    return [range(k * size, (k + 1) * size) for k in range(mini_batches)]


def update_schedule(num_seqs: int, mini_batches: int = 1, num_iterations: int = 1) -> list[Update]:
    """Every optimizer step of one rollout batch, in order (iteration-major)."""
    _check_int("trainer.num_iterations", num_iterations, 1)
    ranges = mini_batch_ranges(num_seqs, mini_batches)
    return [Update(index=it * len(ranges) + k, iteration=it, mini_batch=k, seqs=r)
            for it in range(num_iterations) for k, r in enumerate(ranges)]


def token_spans(seq_lens, ranges: list[range]) -> list[range]:
    """Packed-token ranges of sequence ranges: sequence i owns tokens sum(seq_lens[:i]) ... (e.g. completion
    tokens for slicing a loss; `ranges` consecutive over the same indexing)."""
    offsets = [0]
    for n in seq_lens:
        offsets.append(offsets[-1] + int(n))
    for r in ranges:
        if r.start < 0 or r.stop > len(offsets) - 1 or r.step != 1:
            raise ValueError(f"token_spans: range {r} lies outside the {len(offsets) - 1} sequences")
    return [range(offsets[r.start], offsets[r.stop]) for r in ranges]
