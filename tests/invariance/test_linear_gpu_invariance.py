"""`linear` batch invariance on the H100 (`gpu`): a row alone == the same row inside batches of 1..4096 rows
(torch.equal), at random positions, for Qwen3-0.6B/1.7B/8B layer shapes (fused qkv / gate_up included) and the
151,936-row LM head -- so across both schedules of the TMA GEMM (split pieces at small M, whole-K at large M)
-- and for ragged packed sequences. A self-check shows the harness flags a batch-dependent op."""
import pytest
import torch

from onpolicy.kernels import linear

SIZES = [1, 2, 3, 5, 8, 16, 17, 31, 64, 100, 127, 128, 129, 255, 256, 257, 512, 1000, 1024, 2047, 4096]
SHAPES = [(1024, 3072), (1024, 4096), (1024, 6144), (3072, 1024), (2048, 1024),  # 0.6B
          (2048, 6144), (2048, 4096), (2048, 12288), (6144, 2048), (2048, 2048),  # 1.7B
          (4096, 12288), (4096, 6144), (4096, 24576), (12288, 4096), (4096, 4096)]  # 8B
LM_HEADS = [1024, 2048, 4096]


def _first_mismatch(op, K, sizes, seed=0):
    """(batch size, position) where op(row alone) != that row inside the batch, else None."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    pool = torch.randn(max(sizes), K, device="cuda", generator=g).bfloat16()
    alone = {}
    for n in sizes:
        full = op(pool[:n])
        for pos in {0, int(torch.randint(0, n, (1,), generator=g, device="cuda")), n - 1}:
            if pos not in alone:
                alone[pos] = op(pool[pos:pos + 1])
            if not torch.equal(full[pos:pos + 1], alone[pos]):
                return n, pos
    return None


def _weight(N, K):
    g = torch.Generator(device="cuda").manual_seed(1)
    return (torch.randn(N, K, device="cuda", generator=g) / K**0.5).bfloat16()


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SHAPES)
def test_linear_rows_invariant_qwen3_shapes(K, N):
    w = _weight(N, K)
    assert _first_mismatch(lambda x: linear(x, w), K, SIZES) is None


@pytest.mark.gpu
@pytest.mark.parametrize("K", LM_HEADS)
def test_linear_rows_invariant_lm_head(K):
    w = _weight(151936, K)
    assert _first_mismatch(lambda x: linear(x, w), K, [1, 3, 64, 255, 256, 1000, 4096]) is None


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", [(3072, 1024), (1024, 6144), (12288, 4096)])
def test_linear_ragged_packed_sequences(K, N):
    w = _weight(N, K)
    lens = [1, 5, 17, 300, 3, 1000, 64, 2]
    seqs = [torch.randn(n, K, device="cuda").bfloat16() for n in lens]
    packed = linear(torch.cat(seqs), w)
    start = 0
    for seq in seqs:
        assert torch.equal(packed[start:start + seq.shape[0]], linear(seq, w))
        start += seq.shape[0]


@pytest.mark.gpu
def test_harness_flags_a_batch_dependent_op():
    w = _weight(1024, 3072)
    assert _first_mismatch(lambda x: linear(x - x.float().mean(0).bfloat16(), w), 3072, [1, 2, 3]) is not None
