"""Batch-invariant sampling: greedy, or Gumbel-max over top-k / top-p filtered log-probabilities.

The randomness of vocab id v for a sampled token is a counter-based hash (splitmix64 rounds in int64 torch
ops) of (request seed, sample index, output position, v): a seeded request draws the same noise alone or in
any batch, on any device, and after preemption. Every step is row-wise with the vocab size as the only
shape that matters: sorts are stable, the top-p cumulative sum runs on integer-quantised probabilities
(exact, so its order cannot matter), argmax takes the lowest id on ties.
Left out: min_p, repetition/presence penalties, logit bias.
"""
from __future__ import annotations

import torch

from onpolicy import kernels


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_PROB_SCALE = float(2**40)  # top-p works on probabilities quantised to multiples of 2**-40


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """One splitmix64 step on int64 (wrapping arithmetic), elementwise."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def row_keys(seeds: torch.Tensor, sample_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """int64 [M] key per sampled token from (seed, sample index, output position)."""
    h = splitmix64(seeds.long())
    h = splitmix64(h ^ sample_index.long())
    return splitmix64(h ^ positions.long())


def uniform_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float64 [M, V] uniforms in (0, 1): entry (m, v) depends only on keys[m] and v."""
    v = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    z = splitmix64(splitmix64(keys[:, None] ^ v[None, :]))
    return (_shr(z, 11).double() + 0.5) * 2.0**-53


def gumbel_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float64 [M, V] standard Gumbel noise. On CPU one row at a time (fixed shape [V]) so vectorised vs
    scalar-tail code paths of log cannot depend on the row's place in the batch."""
    if keys.device.type == "cpu":
        rows = [-torch.log(-torch.log(uniform_noise(keys[i : i + 1], vocab_size))) for i in range(keys.numel())]
        return torch.cat(rows, 0) if rows else torch.empty(0, vocab_size, dtype=torch.float64)
    return -torch.log(-torch.log(uniform_noise(keys, vocab_size)))


def filter_top_k_top_p(logp: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set log-probabilities outside each row's top-k (k <= 0: off; ties at the k-th value kept) and then
    outside its top-p nucleus (of the top-k renormalised mass; p >= 1: off) to -inf. fp32 [M, V] in/out."""
    m, vocab = logp.shape
    use_k = top_k > 0
    use_p = top_p < 1.0
    if not bool((use_k | use_p).any()):  # one host sync
        return logp
    sorted_lp, _ = torch.sort(logp, dim=-1, descending=True, stable=True)
    neg_inf = torch.full((m,), float("-inf"), device=logp.device, dtype=logp.dtype)
    k_idx = (top_k.clamp(min=1, max=vocab) - 1).long()
    k_thresh = torch.where(use_k, sorted_lp.gather(1, k_idx[:, None])[:, 0], neg_inf)
    # Integer-quantised probabilities: their cumulative sum is exact, so independent of summation order.
    kept = sorted_lp >= k_thresh[:, None]
    q = torch.where(kept, torch.floor(torch.exp(sorted_lp).double() * _PROB_SCALE).long(), 0)
    total = q.sum(dim=-1)
    exclusive = torch.cumsum(q, dim=-1) - q
    limit = torch.floor(top_p.double() * total.double()).long()
    in_nucleus = (exclusive < limit[:, None]) & kept
    in_nucleus[:, 0] = True
    n_keep = in_nucleus.sum(dim=-1)
    p_thresh = torch.where(use_p, sorted_lp.gather(1, (n_keep - 1)[:, None])[:, 0], neg_inf)
    thresh = torch.maximum(k_thresh, p_thresh)
    return logp.masked_fill(logp < thresh[:, None], float("-inf"))


def sample_tokens(logits: torch.Tensor, greedy: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  seeds: torch.Tensor, sample_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token ids int64 [M] from fp32 logits [M, V] already divided by each row's temperature (rows with
    greedy=True: temperature-1 logits, argmax). All other args are [M] tensors on logits' device."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"sample_tokens: logits must be fp32 [M, V], got {logits.dtype} {tuple(logits.shape)}")
    m, vocab = logits.shape
    tokens = torch.argmax(logits, dim=-1)
    stochastic = ~greedy
    if not bool(stochastic.any()):
        return tokens
    idx = stochastic.nonzero()[:, 0]
    logp = kernels.log_softmax(logits[idx].contiguous())
    logp = filter_top_k_top_p(logp, top_k[idx], top_p[idx])
    keys = row_keys(seeds[idx], sample_index[idx], positions[idx])
    scores = logp.double() + gumbel_noise(keys, vocab)
    tokens[idx] = torch.argmax(scores, dim=-1)
    return tokens


def sample_plain(logits: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor, sample_index: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """`sample_tokens` for rows with no top-k / top-p, the same bits: on CUDA one Triton launch with no host
    sync (sampling_triton.py; graph-capturable), on CPU `sample_tokens` itself."""
    if logits.is_cuda:
        from onpolicy.engine.sampling_triton import sample_plain_triton

        return sample_plain_triton(logits, greedy, seeds.long(), sample_index.long(), positions.long())
    m = logits.shape[0]
    no_k = torch.zeros(m, dtype=torch.int64)
    no_p = torch.ones(m, dtype=torch.float64)
    return sample_tokens(logits, greedy, no_k, no_p, seeds, sample_index, positions)


def sample(logits: torch.Tensor, greedy: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor,
           sample_index: torch.Tensor, positions: torch.Tensor, filtered: list[int]) -> torch.Tensor:
    """`sample_tokens` (same arguments), with the rows listed in `filtered` (host ints: the rows that use top-k
    or top-p) sampled by `sample_tokens` and every other row by `sample_plain` -- the same bits as
    `sample_tokens` on all rows, since every step is row-wise."""
    if not logits.is_cuda:
        return sample_tokens(logits, greedy, top_k, top_p, seeds, sample_index, positions)
    tokens = sample_plain(logits, greedy, seeds, sample_index, positions)
    if filtered:
        idx = torch.tensor(filtered, device=logits.device)
        tokens[idx] = sample_tokens(logits[idx], greedy[idx], top_k[idx], top_p[idx], seeds[idx], sample_index[idx],
                                    positions[idx])
    return tokens
