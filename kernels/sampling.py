"""Batch-invariant token sampling from fp32 logits: greedy, or Gumbel-max with counter-based noise (`sample_plain`).

The noise of vocab id v for a sampled token is a counter-based hash (splitmix64 rounds in int64 torch ops) of
(request seed, sample index, output position, v): a seeded request draws the same noise alone or in any batch,
on any device, and after preemption. Greedy rows take the argmax of the logits (lowest id on ties); the others
the argmax of `float64(log_softmax(x)) + gumbel`, with `log_softmax` this package's batch-invariant op.
GPU: one Triton program per row (sampling_triton.py), no host sync, so CUDA graphs can capture it. CPU: the
same steps in torch (`gumbel_max_torch`, Gumbel noise one row at a time). `sample_plain_reference`: the same
draw over torch's default log_softmax. Left out: top-k / top-p (onpolicy.engine.sampling filters the
log-probabilities through `gumbel_max_torch`'s `filter_logp`), min_p, penalties, logit bias.
"""
from __future__ import annotations

from typing import Callable

import torch

from onpolicy.kernels._common import check, check_same_device, check_tensor, use_triton
from onpolicy.kernels.logprobs import log_softmax, log_softmax_reference
from onpolicy.kernels.sampling_triton import SPLITMIX_GOLDEN, SPLITMIX_MIX1, SPLITMIX_MIX2, _sample_plain_triton

_INDEX_DTYPES = (torch.int64, torch.int32)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """One splitmix64 step on int64 (wrapping arithmetic), elementwise."""
    z = z + SPLITMIX_GOLDEN
    z = (z ^ _shr(z, 30)) * SPLITMIX_MIX1
    z = (z ^ _shr(z, 27)) * SPLITMIX_MIX2
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


def gumbel_max_torch(logits: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor, sample_index: torch.Tensor,
                     positions: torch.Tensor, log_softmax_fn: Callable = log_softmax,
                     filter_logp: Callable | None = None) -> torch.Tensor:
    """Token ids int64 [M] in torch: argmax of the greedy rows' logits; for the others the argmax of
    `float64(logp) + gumbel_noise`, logp = `log_softmax_fn` of the row's logits, passed through
    `filter_logp(logp, rows)` (rows: their indices into the batch; returns logp with entries set to -inf)."""
    tokens = torch.argmax(logits, dim=-1)
    stochastic = ~greedy
    if not bool(stochastic.any()):
        return tokens
    idx = stochastic.nonzero()[:, 0]
    logp = log_softmax_fn(logits[idx].contiguous())
    if filter_logp is not None:
        logp = filter_logp(logp, idx)
    keys = row_keys(seeds[idx], sample_index[idx], positions[idx])
    tokens[idx] = torch.argmax(logp.double() + gumbel_noise(keys, logits.shape[1]), dim=-1)
    return tokens


def _check_sample_args(logits, greedy, seeds, sample_index, positions) -> None:
    op = "sample_plain"
    check_tensor(op, "logits", logits, (torch.float32,))
    check(logits.dim() == 2 and logits.shape[1] > 0, op, f"logits must be 2-D [M, V] with V > 0, got shape "
          f"{tuple(logits.shape)}")
    m = logits.shape[0]
    check_tensor(op, "greedy", greedy, (torch.bool,))
    for name, t in (("seeds", seeds), ("sample_index", sample_index), ("positions", positions)):
        check_tensor(op, name, t, _INDEX_DTYPES)
    for name, t in (("greedy", greedy), ("seeds", seeds), ("sample_index", sample_index), ("positions", positions)):
        check(tuple(t.shape) == (m,), op, f"{name} must have shape [M]=({m},), got {tuple(t.shape)}")
    check_same_device(op, logits=logits, greedy=greedy, seeds=seeds, sample_index=sample_index, positions=positions)


def sample_plain_reference(logits: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor,
                           sample_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The same draw over torch's default log_softmax (plain torch; not batch invariant on CUDA)."""
    return gumbel_max_torch(logits, greedy, seeds, sample_index, positions, log_softmax_fn=log_softmax_reference)


def sample_plain(logits: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor, sample_index: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """Token ids int64 [M] from fp32 logits [M, V] already divided by each row's temperature (greedy rows:
    temperature-1 logits), bool greedy [M], integer seeds / sample_index / positions [M]. CUDA: one Triton
    launch, no host sync; CPU: `gumbel_max_torch` (the same bits as the Triton kernel in invariant mode)."""
    _check_sample_args(logits, greedy, seeds, sample_index, positions)
    if use_triton(logits):
        return _sample_plain_triton(logits, greedy, seeds.long(), sample_index.long(), positions.long())
    return gumbel_max_torch(logits, greedy, seeds, sample_index, positions)
