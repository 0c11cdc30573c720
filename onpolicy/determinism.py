"""Every global numerics switch of onpolicy, in one place.

`enable()` is called once by recipes, scripts and tests before any compute. It turns TF32 off (our kernels
never use it either: fp32 dots run with `input_precision="ieee"`), asks torch for deterministic algorithms,
sets the cuBLAS workspace so the trainer's backward (which may use cuBLAS) is run-to-run deterministic, and
seeds python/numpy/torch. What it does not do: make third-party ops batch invariant -- that is the job of
`kernels/`, which avoid cuBLAS/MKL shape heuristics altogether on the forward path.
"""
from __future__ import annotations

import os
import random

import torch

CUBLAS_WORKSPACE = ":4096:8"
# MKL's strict conditional-numerical-reproducibility mode: its GEMMs give the same bits for any thread count.
# Without it, MKL (AVX-512 code path) splits the K loop of a [64, K] @ [K, N] tile across threads, so the fixed
# row tiles below are not enough (1 vs 2 threads differed at K >= 1024). MKL reads the variable at its first call,
# so it is set when this module is imported (`import onpolicy` imports it), before any GEMM of ours runs.
MKL_REPRODUCIBILITY = "AUTO,STRICT"
os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBILITY)
# torch's CPU thread count; -1 = this process's share of the cores (all of them, divided among the processes of
# a local multi-process launch, LOCAL_WORLD_SIZE). Results do not depend on it: every CPU GEMM runs on fixed
# 64-row tiles with widths padded to 16 columns in MKL's strict mode, forward and backward (kernels/matmul.py `grad_mm`; MKL's own
# split of a [5, 128] @ [128, 86] input-gradient GEMM changed bits at 2 threads), and
# tests/invariance/test_thread_invariance*.py check 1 vs 2 and 3 threads (linear up to 32), the shortened default
# bitwise. Measured on the 2-core CPU machine with the tiled backward: the tiny default (300 steps) took 117 s
# (RL part) at 1 thread (taskset, one core) and 99.5 s at 2, with identical metrics.jsonl and final weights hash.
# `trainer.num_threads: auto` (the default) starts here, then follows the free cores; `share` keeps this
# (onpolicy.trainer.cpu_threads).
DEFAULT_CPU_THREADS = -1


def all_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask; os.cpu_count() where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def cpu_share() -> int:
    """This process's share of the cores: all of them, divided among LOCAL_WORLD_SIZE processes (torchrun)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, all_cpu_cores() // max(1, int(local) if local.isdigit() else 1))


def enable(seed: int | None = 0, cpu_threads: int | None = DEFAULT_CPU_THREADS) -> None:
    """Turn on every determinism switch; idempotent. `seed=None` leaves RNGs alone.

    `cpu_threads`: torch's intra-op thread count; -1 = this process's share of the cores, None = leave it. Results do not depend on
    it: every CPU op of the model, its backward and the trainer's reductions give the same bits for any count."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=False)
    # Deterministic mode also NaN-fills every new allocation; our kernels never read unwritten memory (masked
    # loads), and the fill costs the engine a pass over each fresh buffer.
    torch.utils.deterministic.fill_uninitialized_memory = False
    if cpu_threads is not None:
        threads = cpu_share() if cpu_threads == -1 else cpu_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if seed is not None:
        seed_everything(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for the core
        pass
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, for checkpoints."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
