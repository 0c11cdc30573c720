"""The TMA GEMM's two schedules give the same bits at every M (`gpu`): whole-K programs and split (tile, K
piece) programs plus the ordered piece sum, each forced at batch sizes where the automatic choice would take the
other; with and without the PDL (programmatic dependent launch) piece sum; and the split schedule captured in a
CUDA graph (how the engine replays it) == eager. Shapes: every Qwen3 layer shape whose config has K pieces."""
import importlib

import pytest
import torch

mm = importlib.import_module("onpolicy.kernels.matmul")
SHAPES = [(1024, 3072), (2048, 6144), (3072, 1024), (6144, 2048), (12288, 4096), (2048, 1024), (1024, 151936)]
ROWS = [1, 3, 64, 129, 256, 1000]


def _inputs(K, N, rows, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(N, K, device="cuda", generator=g) / K**0.5).bfloat16()
    return torch.randn(rows, K, device="cuda", generator=g).bfloat16(), w


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SHAPES)
def test_split_and_whole_k_schedules_equal_at_every_m(K, N):
    cfg = mm.tile_config(torch.bfloat16, K, N)
    if -(-K // cfg["PIECE_K"]) == 1:
        pytest.skip("one K piece: a single schedule")
    x, w = _inputs(K, N, max(ROWS))
    for m in ROWS if N < 100000 else ROWS[:3]:
        whole = mm._linear_tma(x[:m], w, None, cfg, split=False)
        for pdl in (True, False):
            split = mm._linear_tma(x[:m], w, None, dict(cfg, PDL=pdl), split=True)
            assert torch.equal(split, whole), (m, pdl)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", [(1024, 3072), (3072, 1024)])
def test_split_schedule_in_a_cuda_graph_equals_eager(K, N):
    cfg = mm.tile_config(torch.bfloat16, K, N)
    x, w = _inputs(K, N, 4)
    b = torch.randn(N, device="cuda").bfloat16()
    eager = [mm._linear_tma(x, w, bias, cfg, split=True) for bias in (None, b)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch's graph capture requires
        mm._linear_tma(x, w, None, cfg, split=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [mm._linear_tma(x, w, bias, cfg, split=True) for bias in (None, b)]
    x.copy_(x.flip(0))
    graph.replay()
    torch.cuda.synchronize()
    flipped = [mm._linear_tma(x, w, bias, cfg, split=True) for bias in (None, b)]
    for out, ref, old in zip(outs, flipped, eager):
        assert torch.equal(out, ref) and not torch.equal(out, old)
