"""Triton side of `kernels.logprobs`: a row-wise log_softmax over fixed-width chunks, and the fold of one span of
LM-head logits into each row's online (max, sum of exp, target logit) state. One program per row; the chunk
widths are constants from logprobs.py (never derived from the number of rows). Left out: a fused GEMM + fold.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import require_triton, tl, triton

LOG_SOFTMAX_BLOCK = 4096  # columns per step of the Triton log_softmax loop (and of the CPU path's chunked sum)
VOCAB_CHUNK = 4096  # rows of the LM head per step of token_logprobs (fixed; never derived from M)

if triton is not None:

    @triton.jit
    def row_fold_lse(x_row, W, m, s, BLOCK: tl.constexpr):
        """Fold columns [0, W) of one row (any float dtype, upcast exactly), BLOCK at a time in order, into the
        fp32 online state (max m, sum of exp(x - m) s); returns the new (m, s). The one copy of this update:
        log_softmax, the token_logprobs span fold and the engine's sampler all reduce through it."""
        offs = tl.arange(0, BLOCK)
        for start in range(0, W, BLOCK):
            cols = start + offs
            x = tl.load(x_row + cols, mask=cols < W, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        return m, s

    @triton.jit
    def _log_softmax_kernel(x_ptr, out_ptr, V, stride_x, stride_out, BLOCK: tl.constexpr):
        """One program per row: running (max, sum exp) over BLOCK-wide chunks, then out = x - lse."""
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        out_row = out_ptr + row * stride_out
        m, s = row_fold_lse(x_row, V, tl.full([], float("-inf"), tl.float32), tl.full([], 0.0, tl.float32), BLOCK)
        lse = m + tl.log(s)
        offs = tl.arange(0, BLOCK)
        for start in range(0, V, BLOCK):
            cols = start + offs
            x = tl.load(x_row + cols, mask=cols < V, other=0.0).to(tl.float32)
            tl.store(out_row + cols, x - lse, mask=cols < V)

    @triton.jit
    def _fold_span_kernel(logits_ptr, stride_l, W, c0, targets_ptr, m_ptr, s_ptr, tgt_ptr, CHUNK: tl.constexpr):
        """One program per row: fold the logits of vocab columns [c0, c0 + W) (any float dtype, upcast exactly),
        CHUNK columns at a time in order, into the row's fp32 (max, sum exp, target logit) state, in place.
        A span of n chunks performs exactly the operations of n one-chunk launches."""
        row = tl.program_id(0).to(tl.int64)
        l_row = logits_ptr + row * stride_l
        m, s = row_fold_lse(l_row, W, tl.load(m_ptr + row), tl.load(s_ptr + row), CHUNK)
        tl.store(m_ptr + row, m)
        tl.store(s_ptr + row, s)
        t = tl.load(targets_ptr + row) - c0
        hit = (t >= 0) & (t < W)
        x_t = tl.load(l_row + t, mask=hit, other=0.0).to(tl.float32)
        tl.store(tgt_ptr + row, x_t, mask=hit)


def _log_softmax_triton(x: torch.Tensor, block: int = LOG_SOFTMAX_BLOCK) -> torch.Tensor:
    """Triton log_softmax of 2-D x (unit stride along V) -> fp32; one program per row."""
    require_triton("log_softmax")
    x = x if x.stride(-1) == 1 else x.contiguous()
    M, V = x.shape
    out = torch.empty((M, V), device=x.device, dtype=torch.float32)
    if M:
        _log_softmax_kernel[(M,)](x, out, V, x.stride(0), out.stride(0), BLOCK=block, num_warps=8)
    return out


def _fold_span_triton(logits: torch.Tensor, c0: int, targets: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                      tgt: torch.Tensor) -> None:
    """logits [M, W] (unit column stride) are vocab columns [c0, c0 + W), c0 a multiple of VOCAB_CHUNK."""
    M, W = logits.shape
    if M:
        _fold_span_kernel[(M,)](logits, logits.stride(0), W, c0, targets, m, s, tgt, CHUNK=VOCAB_CHUNK,
                                num_warps=8)
