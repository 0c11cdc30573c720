"""Routing parity of MoE models: which experts each token chose in the sampler's mode and in the trainer's.

`mode_routing(model, prompts, completions)` runs the batch twice under `moe.record_routing` -- in engine mode
(paged KV cache: every prompt prefilled in one step, then every completion but its last token in a second step
that attends to the cached prompt, as the engine's prefill and decode read the cache) and in training mode (one
packed varlen forward, as `sequence_logprobs`) -- and returns each token's experts in both, per sequence
([tokens, moe layers, k]). `routes_differ` flags the tokens whose expert *sets* differ in any layer and
`routing_mismatch` is their fraction; `mode_routes_differ(model, ...)` gives one rank's flags, which
`onpolicy.trainer.distributed.gather_parity` gathers so that the logged value covers every rank's tokens.
The routes are recomputed, not captured during the rollout: the engine-mode pass runs the sampler's kernels and
cache layout on other batch compositions than the rollout's steps (whose bitwise logprobs the parity metrics
already check), so the metric fails whenever the two modes route a token differently.
Left out: recording routes inside the engine's own steps (CUDA-graph replays), routing replay.
"""
from __future__ import annotations

import torch

from onpolicy.model.logprobs import pack_sequences
from onpolicy.model.metadata import AttentionMetadata
from onpolicy.model.moe import moe_layers, record_routing

BLOCK = 16  # engine-mode cache block size of the re-run
ROUTING_KEY = "onpolicy/routing_mismatch"
CHUNK_TOKENS = 16384  # tokens per re-run group (its KV cache: 16k tokens x layers x 2 x kv heads x head_dim)


def _engine_step(model, caches, seqs, spans, tables, device):
    """One engine-mode forward over tokens seqs[b][a:e] for (a, e) in spans (the cache holds seqs[b][:a])."""
    ids, pos, slots, cu = [], [], [], [0]
    for s, (a, e), table in zip(seqs, spans, tables):
        ids += s[a:e]
        pos += range(a, e)
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(a, e)]
        cu.append(cu[-1] + e - a)
    width = max(len(t) for t in tables)
    i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    i64 = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    meta = AttentionMetadata(cu_seqlens_q=i32(cu), seqlens_k=i32([e for _, e in spans]),
                             block_table=i32([t + [0] * (width - len(t)) for t in tables]),
                             kv_offsets=i32([0] * len(seqs)), block_size=BLOCK, slot_mapping=i64(slots))
    model(i64(ids), i64(pos), meta, caches)


@torch.no_grad()
def engine_mode_routing(model, prompts: list[list[int]], completions: list[list[int]]) -> list[torch.Tensor]:
    """Per sequence: int64 [len(prompt) + len(completion) - 1, moe layers, k] experts in engine mode."""
    c, device = model.config, model.lm_head_weight.device
    seqs = [list(p) + list(q) for p, q in zip(prompts, completions)]
    tables, start = [], 0
    for s in seqs:
        n = -(-len(s) // BLOCK)
        tables.append(list(range(start, start + n)))
        start += n
    shape = (start * BLOCK, c.num_key_value_heads, c.head_dim)
    zeros = lambda: torch.zeros(shape, dtype=c.torch_dtype, device=device)  # noqa: E731  (plain tensors under FSDP)
    caches = [(zeros(), zeros()) for _ in range(c.num_hidden_layers)]
    with record_routing(model) as rec:
        _engine_step(model, caches, seqs, [(0, len(p)) for p in prompts], tables, device)
        second = [b for b, (p, s) in enumerate(zip(prompts, seqs)) if len(s) - 1 > len(p)]
        if second:
            _engine_step(model, caches, [seqs[b] for b in second],
                         [(len(prompts[b]), len(seqs[b]) - 1) for b in second], [tables[b] for b in second], device)
    steps = rec.forwards()
    prefill = list(torch.split(steps[0], [len(p) for p in prompts]))
    decode = dict(zip(second, torch.split(steps[1], [len(seqs[b]) - 1 - len(prompts[b]) for b in second]))) \
        if second else {}
    out = [torch.cat([prefill[b], decode[b]]) if b in decode else prefill[b] for b in range(len(seqs))]
    return [r[: len(s) - 1] for r, s in zip(out, seqs)]  # an empty completion: the positions training scores


@torch.no_grad()
def training_mode_routing(model, prompts: list[list[int]], completions: list[list[int]]) -> list[torch.Tensor]:
    """Per sequence: int64 [len(prompt) + len(completion) - 1, moe layers, k] experts in one packed forward."""
    ids, positions, cu, *_ = pack_sequences(prompts, completions, model.lm_head_weight.device)
    with record_routing(model) as rec:
        model(ids, positions, AttentionMetadata.for_training(cu))
    lens = [len(p) + len(q) for p, q in zip(prompts, completions)]
    return [r[:-1] for r in torch.split(rec.forwards()[0], lens)]


def routes_differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """bool [tokens]: True where a token's expert sets differ in any MoE layer between routes `a` and `b`
    (per sequence [tokens, layers, k]), the sequences' tokens in order."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("routing_mismatch: the two sides must have one [tokens, layers, k] tensor per sequence "
                         "of equal shapes")
    if not a:
        return torch.zeros(0, dtype=torch.bool)
    x, y = torch.cat(a), torch.cat(b)
    return (x.sort(-1).values != y.sort(-1).values).flatten(1).any(1)


def routing_mismatch(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of tokens whose expert sets differ in any MoE layer between routes `a` and `b` (per sequence
    [tokens, layers, k]); 0.0 for no tokens."""
    return routing_metrics(routes_differ(a, b))[ROUTING_KEY]


def routing_metrics(differs: torch.Tensor) -> dict:
    """{ROUTING_KEY: fraction of True} of `routes_differ`' flags (0.0 for no tokens)."""
    return {ROUTING_KEY: differs.double().mean().item() if differs.numel() else 0.0}


def _groups(prompts, completions, budget: int):
    """Consecutive index ranges whose prompt + completion tokens stay within `budget` (at least one sequence)."""
    start, used = 0, 0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        if i > start and used + n > budget:
            yield range(start, i)
            start, used = i, 0
        used += n
    if start < len(prompts):
        yield range(start, len(prompts))


def routing_parity(model, prompts: list[list[int]], completions: list[list[int]]) -> dict:
    """{ROUTING_KEY: fraction} for a model with MoE layers, {} for a dense one or no sequences."""
    differs = mode_routes_differ(model, prompts, completions)
    return {} if differs is None or not prompts else routing_metrics(differs)


def mode_routes_differ(model, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor | None:
    """`routes_differ` between the engine's and the training mode for every token of the sequences (None for
    a dense model). Runs in groups of at most CHUNK_TOKENS tokens (the engine-mode pass allocates a KV cache
    for its group)."""
    if not moe_layers(model):
        return None
    sampler, trainer = [], []
    for g in _groups(prompts, completions, CHUNK_TOKENS):
        p, c = [prompts[i] for i in g], [completions[i] for i in g]
        sampler += engine_mode_routing(model, p, c)
        trainer += training_mode_routing(model, p, c)
    return routes_differ(sampler, trainer)
