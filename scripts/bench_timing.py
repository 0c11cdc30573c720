"""Timing helpers for scripts/bench_*.py: median eager time (`do_bench` on CUDA, a perf_counter loop on CPU),
GPU-only time per call from CUDA-graph replays, and the row-0 batch-invariance probe. Left out: profiling
(scripts/sweep_linear.py has the profiler), statistics beyond the median.
"""
from __future__ import annotations

import statistics
import time

import torch


def bench(fn, device: str, reps: int) -> float:
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA, a perf_counter loop on CPU."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn, calls: int, replays: int = 10) -> float:
    """GPU milliseconds per call: median over `replays` of one CUDA-graph replay of fn (which makes `calls`
    calls), timed with events. No host launch overhead, weights read from HBM (fn rotates copies)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def rows_invariant(fn_batch, fn_one) -> bool:
    """Whether row/sequence 0 of the full batch equals the same input computed alone (bitwise)."""
    return bool(torch.equal(fn_batch()[: 1], fn_one()[: 1]))
