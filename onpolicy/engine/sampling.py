"""The engine's sampling: a step's tokens and reported logprobs from its hidden rows and each row's parameters.

`sample_hidden` (the native runner and the vLLM backend both call it): per effective temperature the LM head
once (`model.logits`), the tokens from those logits (`sample`), the reported logprob from the same logits with
the trainer's reduction (`model.logits_logprobs`), one device-to-host copy. Tokens: greedy, or Gumbel-max with
counter-based noise (`kernels.sampling`: a seeded request draws the same noise alone or in any batch, on any
device, after preemption) over the log-probabilities, top-k / top-p filtered here. Every step is row-wise with
the vocab size as the only shape that matters: sorts are stable, the top-p cumulative sum runs on
integer-quantised probabilities (exact, so its order cannot matter), argmax takes the lowest id on ties.
Temperature 0 samples argmax of the temperature-1 logits and reports temperature-1 logprobs.
Left out: min_p, repetition/presence penalties, logit bias.
"""
from __future__ import annotations

import torch

from onpolicy import kernels
from onpolicy.kernels.sampling import gumbel_max_torch


_PROB_SCALE = float(2**40)  # top-p works on probabilities quantised to multiples of 2**-40


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
    return gumbel_max_torch(logits, greedy, seeds, sample_index, positions,
                            filter_logp=lambda logp, rows: filter_top_k_top_p(logp, top_k[rows], top_p[rows]))


def sample(logits: torch.Tensor, greedy: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, seeds: torch.Tensor,
           sample_index: torch.Tensor, positions: torch.Tensor, filtered: list[int]) -> torch.Tensor:
    """`sample_tokens` (same arguments), with the rows listed in `filtered` (host ints: the rows that use top-k
    or top-p) sampled by `sample_tokens` and every other row by `sample_plain` -- the same bits as
    `sample_tokens` on all rows, since every step is row-wise (`kernels.sample_plain` is `sample_tokens` without
    top-k / top-p, in one Triton launch)."""
    if not logits.is_cuda:
        return sample_tokens(logits, greedy, top_k, top_p, seeds, sample_index, positions)
    tokens = kernels.sample_plain(logits, greedy, seeds, sample_index, positions)
    if filtered:
        idx = torch.tensor(filtered, device=logits.device)
        tokens[idx] = sample_tokens(logits[idx], greedy[idx], top_k[idx], top_p[idx], seeds[idx], sample_index[idx],
                                    positions[idx])
    return tokens


def effective_temperature(temperature: float) -> float:
    """Temperature 0 (greedy) samples argmax of, and reports logprobs at, the temperature-1 logits."""
    return float(temperature) if temperature > 0 else 1.0


def is_filtered(params) -> bool:
    """A stochastic row that uses top-k or top-p (sampled by the torch path)."""
    return params.temperature > 0 and (params.top_k > 0 or params.top_p < 1.0)


def sample_hidden(model, hidden: torch.Tensor, seqs) -> tuple[list[int], list[float | None]]:
    """(token, logprob or None) per row of hidden [len(seqs), H]: `sample_hidden_on_device`, then one
    device-to-host copy. `seqs` need `params`, `seed`, `index` and `num_output` (a Sequence or a stand-in)."""
    both, order = sample_hidden_on_device(model, hidden, seqs)
    both = both.cpu()  # one device-to-host copy
    tokens: list[int] = [0] * len(seqs)
    logprobs: list[float | None] = [None] * len(seqs)
    for i, t, lp in zip(order, both[0].long().tolist(), both[1].float().tolist()):
        tokens[i] = t
        if seqs[i].params.logprobs:
            logprobs[i] = lp
    return tokens, logprobs


def sample_hidden_on_device(model, hidden: torch.Tensor, seqs) -> tuple[torch.Tensor, list[int]]:
    """fp64 [2, b] on the device (token ids; logprobs) grouped by effective temperature, and the row of seqs
    each column belongs to (in order when there is one group)."""
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(effective_temperature(s.params.temperature), []).append(i)
    dev = hidden.device
    order, parts = [], []
    for t_eff, idx in groups.items():
        # one group (the usual case) is every row in order: no gather needed
        h = hidden if len(idx) == len(seqs) else hidden[torch.tensor(idx, device=dev)]
        group = [seqs[i] for i in idx]
        logits = model.logits(h, t_eff)
        # the int64 per-row parameters travel in one host-to-device copy
        top_k, seeds, sample_index, positions = torch.tensor(
            [[s.params.top_k for s in group], [s.seed for s in group], [s.index for s in group],
             [s.num_output for s in group]], dtype=torch.int64, device=dev)
        tok = sample(
            logits,
            greedy=torch.tensor([s.params.temperature == 0 for s in group], dtype=torch.bool, device=dev),
            top_k=top_k,
            top_p=torch.tensor([float(s.params.top_p) for s in group], dtype=torch.float64, device=dev),
            seeds=seeds, sample_index=sample_index, positions=positions,
            filtered=[j for j, s in enumerate(group) if is_filtered(s.params)],
        )
        lp = model.logits_logprobs(logits, tok, t_eff)
        order.extend(idx)
        parts.append(torch.stack([tok.double(), lp.double()]))  # ids < 2**53 and fp32 are exact in fp64
    return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)), order
