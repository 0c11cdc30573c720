"""Shared plumbing for the batch-invariant ops: triton import, mode switch, dispatch, checks, CPU row tiling.

Dispatch: a CUDA tensor runs the op's Triton kernel; a CPU tensor runs its batch-invariant torch path. Inside
`invariant_mode(False)` the GEMM, attention and logprob ops run their `*_reference` / torch default ops
(cuBLAS, SDPA) instead -- the non-invariant stack the engine and trainer offer for comparison; row-wise ops
(norms, RoPE, SiLU) run the same kernels in both modes (their invariance costs nothing).

CPU invariance (measured on this project's CPUs): MKL `torch.mm` is not batch invariant (row 0 changes for
M >= 4), but a matmul of one *fixed* shape is invariant to which row of it a vector sits in and to the thread
count. So CPU paths run every reduction on fixed-shape row tiles (`CPU_ROW_TILE` rows, zero padded), looping
in Python. Transcendentals use exp/log/rsqrt only: torch's vectorised and scalar-tail sigmoid differ in the
last ulp, exp/log/rsqrt were found equal.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - pyproject installs triton on Linux x86_64 only
    triton = tl = None

CPU_ROW_TILE = 32
LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E), ln(x) == log2(x) / LOG2E

_INVARIANT = contextvars.ContextVar("onpolicy_invariant", default=True)


def is_invariant() -> bool:
    """True (default) when ops run their batch-invariant kernels, False inside `invariant_mode(False)`."""
    return _INVARIANT.get()


@contextlib.contextmanager
def invariant_mode(enabled: bool = True):
    """Run the enclosed ops with batch-invariant kernels (True) or, for GEMMs, attention and logprobs, torch's
    default ops (False; row-wise ops are the same in both modes)."""
    token = _INVARIANT.set(bool(enabled))
    try:
        yield
    finally:
        _INVARIANT.reset(token)


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path runs: all tensors on CUDA. (Tests run the Triton launchers on CPU tensors
    under TRITON_INTERPRET=1 by calling them directly.)"""
    return all(t.is_cuda for t in tensors)


def require_triton(op: str) -> None:
    if triton is None:
        raise RuntimeError(f"kernels.{op}: triton is not installed")


FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def check(cond: bool, op: str, msg: str) -> None:
    """Every argument check of every op goes through here: ValueError("kernels.<op>: <msg>")."""
    if not cond:
        raise ValueError(f"kernels.{op}: {msg}")


def check_tensor(op: str, name: str, t, dtypes: Sequence[torch.dtype] = FLOATS) -> None:
    """`t` is a torch.Tensor with a dtype in `dtypes`."""
    check(isinstance(t, torch.Tensor), op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    check(t.dtype in dtypes, op, f"{name} has dtype {str(t.dtype).replace('torch.', '')}; allowed: {allowed}")


def check_in_range(op: str, name: str, t: torch.Tensor, lo: int, hi: int, what: str) -> None:
    """Values of integer `t` lie in [lo, hi): one host sync, skipped while a CUDA graph is being captured."""
    if t.numel() == 0 or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    vmin, vmax = torch.stack([t.min(), t.max()]).tolist()
    check(vmin >= lo and vmax < hi, op, f"{name} must lie in [{lo}, {hi}) ({what}), got values in [{vmin}, {vmax}]")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    check(len(set(devs.values())) <= 1, op, "tensors must be on one device, got " + ", ".join(f"{k}={v}" for k, v in devs.items()))


def pad_rows(x: torch.Tensor, tile: int = CPU_ROW_TILE) -> torch.Tensor:
    """Zero-pad dim 0 of `x` up to a multiple of `tile` (at least one tile)."""
    m = x.shape[0]
    padded = -(-m // tile) * tile if m else tile
    if padded == m:
        return x
    out = x.new_zeros((padded,) + tuple(x.shape[1:]))
    out[:m] = x
    return out


def cpu_row_tiled(fn: Callable[..., torch.Tensor], *xs: torch.Tensor, tile: int = CPU_ROW_TILE) -> torch.Tensor:
    """Apply `fn` to fixed-shape [tile, ...] blocks of the tensors `xs` (one dim-0 size) and stitch the rows back.

    `fn(*blocks)` must map [tile, ...] blocks to a [tile, ...] block row by row; every call sees the same
    shapes, so a row's result does not depend on how many rows (or which) came with it.
    """
    m = xs[0].shape[0]
    padded = [pad_rows(x.contiguous(), tile) for x in xs]
    outs = [fn(*(x[i : i + tile] for x in padded)) for i in range(0, padded[0].shape[0], tile)]
    return torch.cat(outs, 0)[:m]


def tree_sum_last(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by pairwise halving (zero padded to a power of two): elementwise adds in one fixed
    order per row, whatever the row count, the row's position or the thread count (torch.sum's split is not)."""
    width = 1 << max(x.shape[-1] - 1, 0).bit_length()
    if width != x.shape[-1]:
        x = F.pad(x, (0, width - x.shape[-1]))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


if triton is not None:

    @triton.jit
    def dot(a, b, acc, IEEE: tl.constexpr):
        """tl.dot(a, b, acc) (acc may be None); IEEE (fp32 inputs) keeps exact fp32 products, no TF32."""
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)
