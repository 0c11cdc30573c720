"""Thread-invariant reductions for the trainer: `fixed_sum`.

torch's CPU sum/mean of a whole tensor split the work per thread above 32768 elements, so the last bits change
with `torch.set_num_threads` (tests/invariance/test_thread_invariance.py shows it). `fixed_sum` is a pairwise
tree of elementwise adds (`tree_sum_last`): one fixed order whatever the thread count or device; differentiable.
torch's `clip_grad_norm_` needs no replacement: its per-tensor 2-norms were measured thread invariant (tested).
Left out: fused multi-tensor sums, other norms.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import tree_sum_last


def fixed_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of all elements of `x` (0-dim, x.dtype) in one fixed pairwise order; autograd flows through."""
    return tree_sum_last(x.reshape(-1))
