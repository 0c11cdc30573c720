"""What the scripts share: a model by name, timing, and facts about the device and the benchmarked shapes.

Models: "tiny" (the embedded family, head_dim 64), "qwen3-0.6b" (Qwen3-0.6B's shape, random weights) or a
local Hugging Face checkpoint directory. Timing: median eager time (`do_bench` on CUDA, a perf_counter loop
on CPU), GPU-only time per call from CUDA-graph replays, and the row-0 batch-invariance probe.
Left out: profiling (scripts/sweep_linear.py has the profiler), statistics beyond the median.
"""
from __future__ import annotations

import socket
import statistics
import time

import torch

# Qwen3 shapes the kernel benchmarks use: hidden, intermediate, query heads, key/value heads.
QWEN3_SHAPES = {"0.6B": (1024, 3072, 16, 8), "1.7B": (2048, 6144, 16, 8), "8B": (4096, 12288, 32, 8)}
QWEN3_HEAD_DIM, QWEN3_VOCAB = 128, 151936
HBM_BYTES_PER_S = 3.0e12  # device-to-device copy rate measured on an H100 80GB (bytes read + written)
MODELS = ("tiny", "qwen3-0.6b")  # built in; anything else is a checkpoint directory


def default_device(quick: bool = False) -> str:
    """"cuda" when a GPU is present and the run is not a `--quick` smoke run, else "cpu"."""
    return "cuda" if torch.cuda.is_available() and not quick else "cpu"


def device_name(device: str) -> str:
    """What result files record: the GPU's name on CUDA, else the CPU model and its core count."""
    from onpolicy.logging import hardware_name

    return hardware_name("cpu" if torch.device(device).type == "cpu" else "auto")


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free_port() -> int:
    """A free localhost TCP port for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(name: str, device: str, dtype: str):
    """(model in eval mode on `device`, tokenizer or None) for `name`: "tiny", "qwen3-0.6b" (random weights,
    4096 positions) or a local Hugging Face checkpoint directory (its tokenizer when it has one)."""
    if name == "tiny":
        from onpolicy.model.tiny import build_tiny

        model, tok = build_tiny(dtype=dtype, head_dim=64)
    elif name == "qwen3-0.6b":
        from onpolicy.model import CausalLM
        from onpolicy.model.tiny import qwen3_0_6b_config

        model, tok = CausalLM(qwen3_0_6b_config(dtype=dtype, max_position_embeddings=4096)), None
    else:
        from onpolicy.model import load_pretrained, load_tokenizer

        model, _ = load_pretrained(name, dtype=dtype, device=device)
        try:
            tok = load_tokenizer(name)
        except Exception:  # noqa: BLE001 -- a weights-only directory: token-id prompts still work
            tok = None
    return model.to(device).eval(), tok


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
