"""Batch-invariant log-probabilities over the vocabulary: `log_softmax`, `lm_logits`, `token_logprobs`.

Every row's log-sum-exp is an online (running max, running sum of exp) reduction over the vocabulary in fixed
chunks, visited from column 0 upward; the chunk width is a constant, never derived from the number of rows.

GPU: `log_softmax` is one Triton program per row looping over `LOG_SOFTMAX_BLOCK`-wide chunks (pass 1: max and
sum, pass 2: write x - lse). `token_logprobs` computes LM-head logits with `kernels.linear` (invariant GEMM)
over spans of whole `VOCAB_CHUNK`s (as many as `GEMM_LOGITS_BUDGET` allows: the span width changes launch
shapes, never a logit -- see `_gemm_spans`), then `.float() / temperature` in torch (skipped at T == 1, where it
is the identity; the kernel upcasts on load), and one Triton program per row folds the span chunk by chunk
into that row's (max, sum, target logit) state in place.
CPU: the same chunked algorithm in torch; the sum of exp is a pairwise-halving tree of elementwise adds (one
fixed order per row whatever M or the thread count); max is exact; only exp/log are used (elementwise).

`invariant_mode(False)`: the same chunking with torch's default ops (F.linear, logsumexp), no [M, V] logits.
Backward of `token_logprobs` (autograd wrt hidden and weight) recomputes each chunk's logits and accumulates
d_hidden in fp32 in fixed chunk order and d_weight chunk by chunk: deterministic, not batch invariant. Its
GEMMs are `matmul.grad_mm` in invariant mode (on CPU: the same bits for any thread count), plain torch in fast
mode. Left out: fused GEMM + softmax kernel, logits with -inf entries (a row whose first chunk is all -inf
gives NaN), label smoothing / ignore_index, entropy.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import (check, check_in_range, check_same_device, check_tensor, is_invariant,
                                      tree_sum_last, use_triton)
from onpolicy.kernels.logprobs_triton import LOG_SOFTMAX_BLOCK, VOCAB_CHUNK, _fold_span_triton, _log_softmax_triton
from onpolicy.kernels.matmul import grad_mm, linear, tile_config

# VOCAB_CHUNK: rows of the LM head per step of token_logprobs (151936 = 37 * 4096 + 384); LOG_SOFTMAX_BLOCK:
# columns per step of log_softmax. Both fixed, never derived from M; defined beside the Triton kernels.
# GPU token_logprobs: at most this many logits per LM-head GEMM call (2**26: 128 MiB bf16; the whole vocab in
# one GEMM up to M = 431 rows). Changes launch shapes only, never a logit's value (see _gemm_spans).
GEMM_LOGITS_BUDGET = 2**26

def _gemm_spans(M: int, V: int, hidden: torch.Tensor, gpu: bool, budget: int | None) -> list[tuple[int, int]]:
    """Column spans of the LM-head GEMMs, each a whole number of VOCAB_CHUNKs (the last one ragged).

    CPU: one chunk per GEMM (MKL's blocking may depend on N). GPU: as many chunks per GEMM as `budget` logits
    allow (None: all) -- a wider GEMM fills the SMs at decode sizes. Each logit is still bitwise the one a
    one-chunk GEMM gives, because the Triton GEMM's tiles come from `tile_config(dtype, K, N)` and every width
    involved is checked to map to the same config (else one chunk per GEMM); folding stays chunk by chunk."""
    one = [(c0, min(c0 + VOCAB_CHUNK, V)) for c0 in range(0, V, VOCAB_CHUNK)]
    if not gpu:
        return one
    n = len(one) if budget is None else max(1, budget // (max(M, 1) * VOCAB_CHUNK))
    spans = [(c0, min(c0 + n * VOCAB_CHUNK, V)) for c0 in range(0, V, n * VOCAB_CHUNK)]
    widths = {b - a for a, b in spans + one}
    dtype, K = hidden.dtype, hidden.shape[1]
    configs = {tuple(sorted(tile_config(dtype, K, w).items())) for w in widths}
    return spans if len(configs) == 1 else one


def _cpu_online_update(logits: torch.Tensor, m: torch.Tensor, s: torch.Tensor):
    """Fold fp32 chunk logits [M, C] into running (max, sum exp); max is exact, the sum a fixed tree."""
    m_new = torch.maximum(m, logits.amax(dim=-1))
    # exp is elementwise and measured equal on torch's vectorised and scalar-tail paths (unlike sigmoid)
    return m_new, s * torch.exp(m - m_new) + tree_sum_last(torch.exp(logits - m_new[:, None]))


def _log_softmax_cpu(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    M, V = xf.shape
    m = torch.full((M,), float("-inf"))
    s = torch.zeros(M)
    for c0 in range(0, V, LOG_SOFTMAX_BLOCK):
        m, s = _cpu_online_update(xf[:, c0 : c0 + LOG_SOFTMAX_BLOCK], m, s)
    return xf - (m + torch.log(s))[:, None]


def _check_temperature(op: str, temperature) -> float:
    ok = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    ok = ok and math.isfinite(temperature) and temperature > 0
    check(ok, op, f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_head(op: str, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    check_tensor(op, "hidden", hidden)
    check_tensor(op, "weight", weight)
    check(hidden.dim() == 2, op, f"hidden must be 2-D [M, H], got shape {tuple(hidden.shape)}")
    check(weight.dim() == 2 and weight.shape[0] > 0, op,
          f"weight must be 2-D [V, H] with V > 0, got shape {tuple(weight.shape)}")
    check(hidden.shape[1] == weight.shape[1], op,
          f"hidden.shape[1] ({hidden.shape[1]}) must equal weight.shape[1] (H={weight.shape[1]})")
    check(hidden.dtype == weight.dtype, op, f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have one dtype")


def _check_targets(hidden: torch.Tensor, targets: torch.Tensor, V: int, op: str = "token_logprobs") -> None:
    M = hidden.shape[0]
    check_tensor(op, "targets", targets, (torch.int64, torch.int32))
    check(targets.shape == (M,), op, f"targets must have shape [M]=({M},), got {tuple(targets.shape)}")
    check_same_device(op, **{"hidden" if op == "token_logprobs" else "logits": hidden, "targets": targets})
    check_in_range(op, "targets", targets, 0, V, "the vocab size V")


def log_softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """torch's default log_softmax in fp32 (not batch invariant on CUDA)."""
    return torch.log_softmax(x.float(), dim=-1)


def lm_logits_reference(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.linear(hidden, weight).float() / temperature


def token_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             temperature: float = 1.0) -> torch.Tensor:
    """Full [M, V] logits, log_softmax, gather (plain torch autograd)."""
    logp = torch.log_softmax(lm_logits_reference(hidden, weight, temperature), dim=-1)
    return logp.gather(-1, targets.long()[:, None])[:, 0]


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log_softmax of x[M, V] -> fp32 [M, V]; batch invariant (fixed vocab chunks). No autograd."""
    check_tensor("log_softmax", "x", x)
    check(x.dim() == 2 and x.shape[1] > 0, "log_softmax",
          f"x must be 2-D [M, V] with V > 0, got shape {tuple(x.shape)}")
    if not is_invariant():
        return log_softmax_reference(x)
    return _log_softmax_triton(x) if use_triton(x) else _log_softmax_cpu(x)


def lm_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Full logits `linear(hidden, weight).float() / temperature` -> fp32 [M, V] (for sampling).

    The sampler chooses tokens from these; the logprob it reports is `token_logprobs` (the trainer's function)."""
    _check_head("lm_logits", hidden, weight)
    temperature = _check_temperature("lm_logits", temperature)
    check_same_device("lm_logits", hidden=hidden, weight=weight)
    if not is_invariant():
        return lm_logits_reference(hidden, weight, temperature)
    spans = _gemm_spans(hidden.shape[0], weight.shape[0], hidden, use_triton(hidden, weight), None)
    parts = [_scale_logits(linear(hidden, weight[a:b]), temperature) for a, b in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _scale_logits(raw: torch.Tensor, temperature: float, keep_dtype: bool = False) -> torch.Tensor:
    """raw.float() / temperature. x / 1.0 == x exactly, so T == 1 skips the pass (and, with keep_dtype, the
    fp32 copy too: the Triton update kernel upcasts on load, which is exact)."""
    if temperature == 1.0:
        return raw if keep_dtype else raw.float()
    return raw.float() / temperature


def _fold_spans(spans, targets: torch.Tensor, M: int, device, gpu: bool):
    """Online (max, sum exp, target logit) over (c0, logits [M, W]) spans in vocab order, VOCAB_CHUNK columns
    at a time. -> (logprobs fp32 [M], lse fp32 [M])."""
    m = torch.full((M,), float("-inf"), device=device)
    s = torch.zeros(M, device=device)
    tgt = torch.zeros(M, device=device)
    for c0, logits in spans:
        if gpu:
            _fold_span_triton(logits, c0, targets, m, s, tgt)
            continue
        for j in range(0, logits.shape[1], VOCAB_CHUNK):
            chunk = logits[:, j : j + VOCAB_CHUNK].float().contiguous()
            m, s = _cpu_online_update(chunk, m, s)
            rel = targets - (c0 + j)
            hit = (rel >= 0) & (rel < chunk.shape[1])
            picked = chunk.gather(1, rel.clamp(0, chunk.shape[1] - 1)[:, None])[:, 0]
            tgt = torch.where(hit, picked, tgt)
    lse = m + torch.log(s)
    return tgt - lse, lse


def _token_logprobs_forward(hidden, weight, targets, temperature, triton_update=None, budget=GEMM_LOGITS_BUDGET):
    """-> (logprobs fp32 [M], lse fp32 [M]); holds one GEMM span of logits at a time (one chunk on CPU).

    `triton_update` (default: CUDA tensors) folds with the Triton kernel; tests force it on CPU under
    TRITON_INTERPRET=1."""
    gpu = use_triton(hidden, weight) if triton_update is None else triton_update
    M, V = hidden.shape[0], weight.shape[0]
    spans = ((a, _scale_logits(linear(hidden, weight[a:b]), temperature, keep_dtype=gpu))
             for a, b in _gemm_spans(M, V, hidden, gpu, budget))
    return _fold_spans(spans, targets, M, hidden.device, gpu)


def _token_logprobs_fast_forward(hidden, weight, targets, temperature):
    """`invariant_mode(False)`: torch's default ops (cuBLAS GEMM, logsumexp) per VOCAB_CHUNK of the vocab --
    never [M, V] logits. Not batch invariant. -> (logprobs fp32 [M], lse fp32 [M])."""
    M = hidden.shape[0]
    lse, tgt = None, torch.zeros(M, device=hidden.device)
    for c0 in range(0, weight.shape[0], VOCAB_CHUNK):
        logits = _scale_logits(F.linear(hidden, weight[c0 : c0 + VOCAB_CHUNK]), temperature)
        part = torch.logsumexp(logits, dim=-1)
        lse = part if lse is None else torch.logaddexp(lse, part)
        rel = targets - c0
        hit = (rel >= 0) & (rel < logits.shape[1])
        tgt = torch.where(hit, logits.gather(1, rel.clamp(0, logits.shape[1] - 1)[:, None])[:, 0], tgt)
    return tgt - lse, lse


def logits_token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                          head_dtype: torch.dtype) -> torch.Tensor:
    """log softmax(logits)[i, targets[i]] -> fp32 [M] from `logits = lm_logits(hidden, weight, temperature)` of an
    LM head of dtype `head_dtype` (no autograd): the engine runs the LM head once per step.

    Invariant mode: the fold of `token_logprobs` over the logits it would have made itself -- at T == 1 on GPU
    that is the GEMM's own output dtype (`logits.to(head_dtype)` gives it back exactly; the fold kernel's load
    layout, hence its sum order, depends on the dtype it reads) -- so the result equals
    `token_logprobs(hidden, weight, targets, temperature)` bitwise (tested on GPU and CPU).
    `invariant_mode(False)`: torch's logsumexp over the row. Values at -inf are not supported (see module doc)."""
    op = "logits_token_logprobs"
    check_tensor(op, "logits", logits, (torch.float32,))
    check(logits.dim() == 2 and logits.shape[1] > 0, op, f"logits must be 2-D [M, V] with V > 0, got shape {tuple(logits.shape)}")
    temperature = _check_temperature(op, temperature)
    _check_targets(logits, targets, logits.shape[1], op=op)
    targets = targets.long()
    if not is_invariant():
        return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    gpu = use_triton(logits)
    folded = logits.to(head_dtype) if gpu and temperature == 1.0 else logits
    return _fold_spans([(0, folded)], targets, logits.shape[0], logits.device, gpu)[0]


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, fast=False):
        forward = _token_logprobs_fast_forward if fast else _token_logprobs_forward
        out, lse = forward(hidden, weight, targets, temperature)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.fast = temperature, fast
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        T = ctx.temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        mm = torch.matmul if ctx.fast else grad_mm  # invariant mode, CPU: the same bits for any thread count
        g = grad_out.float()
        d_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_h else None
        d_weight = torch.empty_like(weight) if need_w else None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for c0 in range(0, weight.shape[0], VOCAB_CHUNK):
            w_c = weight[c0 : c0 + VOCAB_CHUNK]
            logits = _scale_logits(mm(hidden, w_c.t()), T)
            d_logits = torch.exp(logits - lse[:, None]) * -g[:, None]  # d/dlogit of (x_t - lse) is onehot - p
            rel = targets - c0
            hit = (rel >= 0) & (rel < w_c.shape[0])
            d_logits[rows, rel.clamp(0, w_c.shape[0] - 1)] += torch.where(hit, g, 0.0)  # one entry per row
            d_logits = (d_logits / T).to(weight.dtype)
            if need_h:
                d_hidden += mm(d_logits, w_c).float()
            if need_w:
                d_weight[c0 : c0 + VOCAB_CHUNK] = mm(d_logits.t(), hidden)
        return (d_hidden.to(hidden.dtype) if need_h else None), d_weight, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[i, targets[i]] -> fp32 [M]; batch invariant; autograd.

    hidden [M, H] and weight [V, H] share a float dtype; targets [M] int64/int32 in [0, V).
    """
    _check_head("token_logprobs", hidden, weight)
    temperature = _check_temperature("token_logprobs", temperature)
    check_same_device("token_logprobs", hidden=hidden, weight=weight)
    _check_targets(hidden, targets, weight.shape[0])
    fast = not is_invariant()  # torch's default ops, chunked over the vocab (see _token_logprobs_fast_forward)
    return _TokenLogprobs.apply(hidden.contiguous(), weight.contiguous(), targets.long().contiguous(), temperature,
                                fast)
