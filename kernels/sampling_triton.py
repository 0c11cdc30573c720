"""Triton side of `kernels.sampling`: one kernel for the sampler's usual rows (greedy, or Gumbel-max with no
top-k / top-p), the same bits as `sampling.sample_plain`'s torch path in invariant mode, in one launch and with
no host sync.

One program per row. Greedy rows: argmax of the logits (lowest id on ties, as torch.argmax). Other rows: pass 1
is `kernels.log_softmax`'s own loop (LOG_SOFTMAX_BLOCK-wide chunks from column 0, the same expressions, the
same 8 warps, so the same running max / sum of exp and `lse = m + log(s)`); pass 2 draws each vocab id's
noise in-kernel -- the request key from (seed, sample index, output position) and splitmix64 exactly as
`sampling.row_keys` / `uniform_noise` do in int64 (wrapping multiplies, masked shifts), `-log(-log(u))` in
float64 (libdevice, as torch's CUDA log) -- and keeps the argmax of `float64(x - lse) + gumbel`, lowest id on
ties. The hash constants live here (sampling.py imports them). Left out: top-k / top-p rows (the engine samples
those in torch), CPU (the torch path runs there; under TRITON_INTERPRET=1 numpy's log stands in for libdevice).
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import require_triton, tl, triton
from onpolicy.kernels.logprobs_triton import LOG_SOFTMAX_BLOCK


def _signed(c: int) -> int:
    """The int64 with the bits of the unsigned 64-bit constant c."""
    return c - (1 << 64) if c >= (1 << 63) else c


# splitmix64's constants as int64 (wrapping arithmetic)
SPLITMIX_GOLDEN = _signed(0x9E3779B97F4A7C15)
SPLITMIX_MIX1 = _signed(0xBF58476D1CE4E5B9)
SPLITMIX_MIX2 = _signed(0x94D049BB133111EB)
ARGMAX_BLOCK = 1024  # columns per step of pass 2 (any width gives the same argmax: max is exact, ties -> lowest id)

if triton is not None:
    from triton.language.extra import libdevice

    from onpolicy.kernels.logprobs_triton import row_fold_lse

    _G = tl.constexpr(SPLITMIX_GOLDEN)
    _M1 = tl.constexpr(SPLITMIX_MIX1)
    _M2 = tl.constexpr(SPLITMIX_MIX2)

    @triton.jit
    def _shr(z, s: tl.constexpr):
        """Logical right shift of int64, as sampling._shr."""
        return (z >> s) & ((1 << (64 - s)) - 1)

    @triton.jit
    def _splitmix64(z):
        z = z + _G
        z = (z ^ _shr(z, 30)) * _M1
        z = (z ^ _shr(z, 27)) * _M2
        return z ^ _shr(z, 31)

    @triton.jit
    def _argmax_step(score, start, best, best_i):
        """Fold one block's max into (best, best_i): lowest id on ties, as torch.argmax."""
        bm = tl.max(score, axis=0)
        bi = tl.argmax(score, axis=0, tie_break_left=True).to(tl.int64) + start
        take = bm > best
        return tl.where(take, bm, best), tl.where(take, bi, best_i)

    @triton.jit
    def _greedy_row(x_row, V, ARG_BLOCK: tl.constexpr):
        offs = tl.arange(0, ARG_BLOCK)
        best = tl.full([], float("-inf"), tl.float32)
        best_i = tl.full([], 0, tl.int64)
        for start in range(0, V, ARG_BLOCK):
            cols = start + offs
            x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            best, best_i = _argmax_step(x, start, best, best_i)
        return best_i

    @triton.jit
    def _gumbel_row(x_row, V, seed, index, pos, BLOCK: tl.constexpr, ARG_BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
        # pass 1: kernels.log_softmax's own fold (the same helper, so the same lse bits)
        m, s = row_fold_lse(x_row, V, tl.full([], float("-inf"), tl.float32), tl.full([], 0.0, tl.float32), BLOCK)
        lse = m + tl.log(s)
        key = _splitmix64(_splitmix64(_splitmix64(seed) ^ index) ^ pos)  # sampling.row_keys
        offs = tl.arange(0, ARG_BLOCK)
        best = tl.full([], float("-inf"), tl.float64)
        best_i = tl.full([], 0, tl.int64)
        for start in range(0, V, ARG_BLOCK):
            cols = start + offs
            ok = cols < V
            x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
            z = _splitmix64(_splitmix64(key ^ cols.to(tl.int64)))  # sampling.uniform_noise
            u = (_shr(z, 11).to(tl.float64) + 0.5) * 1.1102230246251565e-16  # * 2**-53
            if LIBDEVICE:
                g = -libdevice.log(-libdevice.log(u))
            else:  # TRITON_INTERPRET=1 (CPU tests): numpy's log
                g = -tl.log(-tl.log(u))
            score = tl.where(ok, (x - lse).to(tl.float64) + g, float("-inf"))
            best, best_i = _argmax_step(score, start, best, best_i)
        return best_i

    @triton.jit
    def _sample_kernel(logits_ptr, stride, V, greedy_ptr, seed_ptr, index_ptr, pos_ptr, out_ptr,
                       BLOCK: tl.constexpr, ARG_BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = logits_ptr + row * stride
        if tl.load(greedy_ptr + row) != 0:
            tl.store(out_ptr + row, _greedy_row(x_row, V, ARG_BLOCK))
        else:
            tok = _gumbel_row(x_row, V, tl.load(seed_ptr + row), tl.load(index_ptr + row), tl.load(pos_ptr + row),
                              BLOCK, ARG_BLOCK, LIBDEVICE)
            tl.store(out_ptr + row, tok)


def _sample_plain_triton(logits: torch.Tensor, greedy: torch.Tensor, seeds: torch.Tensor, sample_index: torch.Tensor,
                         positions: torch.Tensor) -> torch.Tensor:
    """Token ids int64 [M] for rows without top-k / top-p: fp32 logits [M, V] (unit column stride), bool
    greedy [M], int64 seeds / sample_index / positions [M]. No host sync (graph-capturable)."""
    require_triton("sample_plain")
    m, vocab = logits.shape
    out = torch.empty(m, dtype=torch.int64, device=logits.device)
    if m:
        _sample_kernel[(m,)](logits, logits.stride(0), vocab, greedy, seeds, sample_index, positions, out,
                             BLOCK=LOG_SOFTMAX_BLOCK, ARG_BLOCK=ARGMAX_BLOCK, LIBDEVICE=logits.is_cuda,
                             num_warps=8)
    return out
