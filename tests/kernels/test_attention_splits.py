"""Attention's fixed 512-key splits: decode's parallel splits + combine kernel == the forward's in-kernel fold,
bitwise (interpreter on tiny shapes, H100 on Qwen3 heads up to 8192 keys), and the one-split `max_keys` hint
keeps the bits."""
import pytest
import torch

from onpolicy.kernels import attention, attention_reference
from onpolicy.kernels.attention_triton import attention_forward_triton
from tests.kernels.test_attention import TOL, TRITON_DEVICE, _close, _paged_case, needs_triton


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")  # rows with no key in a split (numpy only)
@pytest.mark.parametrize("pack", [False, True])
def test_triton_parallel_splits_equal_the_in_kernel_fold(pack):
    """Decode's parallel 512-key splits + the combine kernel == the forward's in-kernel fold, bitwise, for
    contexts of 1-3 splits (and a prefill-shaped call through the split path too); and both == the reference."""
    (q, k, v), meta = _paged_case([1100, 5, 513, 600], [1, 1, 2, 0], 2, 1, 64, torch.float32, device=TRITON_DEVICE,
                                  seed=4)
    folded, _ = attention_forward_triton(q, k, v, *meta, 1 / 8, False, pack=pack)
    split, _ = attention_forward_triton(q, k, v, *meta, 1 / 8, False, pack=pack, n_splits=3)
    assert torch.equal(split, folded)
    _close(folded, attention_reference(q, k, v, *meta, 1 / 8), TOL[torch.float32])


@needs_triton
def test_triton_one_split_hint_keeps_the_bits():
    """max_keys <= KV_SPLIT compiles the forward without its split fold: the same bits as without the hint."""
    (q, k, v), meta = _paged_case([3, 512, 70], [3, 2, 70], 2, 1, 64, torch.float32, device=TRITON_DEVICE, seed=5)
    plain, lse = attention_forward_triton(q, k, v, *meta, 1 / 8, True)
    hinted, lse_hinted = attention_forward_triton(q, k, v, *meta, 1 / 8, True, max_keys=512)
    assert torch.equal(hinted, plain) and torch.equal(lse_hinted, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pack", [True, False])
def test_gpu_parallel_splits_equal_the_in_kernel_fold(dtype, pack):
    """Decode's parallel 512-key splits + combine == the in-kernel fold (training / prefill), bitwise, on
    Qwen3-0.6B heads, contexts across split boundaries up to 8192; `attention` picks the split path here."""
    ctx = [1, 511, 512, 513, 1500, 4096, 8192, 77]
    (q, k, v), meta = _paged_case(ctx, [1] * len(ctx), 16, 8, 128, dtype, device="cuda", seed=6)
    folded, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=pack)
    split, _ = attention_forward_triton(q, k, v, *meta, 0.1, False, pack=pack, n_splits=16)
    assert torch.equal(split, folded)
    assert torch.equal(attention(q, k, v, *meta, scale=0.1), folded)
    _close(folded, attention_reference(q.float(), k.float(), v.float(), *meta, 0.1), TOL[dtype])
