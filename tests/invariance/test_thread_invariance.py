"""Same bits for any torch thread count (`torch.equal` under 1, 2 and 3 threads), forward and backward.

Every CPU op the model, the sampler and the trainer run: linear/matmul (MKL GEMMs on fixed shapes, forward and
backward, also at few rows and odd widths, and up to 32 threads), rms_norm, rope, silu_mul, attention (engine forward, training forward and backward), log_softmax,
lm_logits, token_logprobs (forward and backward), the embedding backward, and the trainer's reductions
(`fixed_sum` for loss sums, torch's `clip_grad_norm_`, AdamW). Shapes are big enough that torch splits work
across threads (> 32768 elements). A self-test shows the harness catches what does depend on the thread count
(torch.sum of a whole tensor, torch's softmax backward: the old CPU attention backward used it).
"""
import pytest
import torch
import torch.nn.functional as F

from onpolicy import kernels
from onpolicy.trainer.reductions import fixed_sum

THREADS = (1, 2, 3)
DTYPES = [torch.float32, torch.bfloat16]


def _leaf(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).requires_grad_(True)


def _fwd_bwd(fn, *inputs):
    """Outputs of fn(*inputs) and the grads of every float input that requires grad (fixed upstream grad)."""
    out = fn(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not leaves:
        return [out]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out.dtype)
    return [out, *torch.autograd.grad(out, leaves, g)]


def thread_dependence(make_results, threads=THREADS) -> list[int]:
    """Thread counts whose results differ (any tensor, any bit) from those of threads[0] (1)."""
    old = torch.get_num_threads()
    try:
        runs = {}
        for n in threads:
            torch.set_num_threads(n)
            runs[n] = [t.detach() for t in make_results()]
    finally:
        torch.set_num_threads(old)
    return [n for n in threads[1:] if not all(torch.equal(a, b) for a, b in zip(runs[threads[0]], runs[n]))]


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)


OPS = {
    "linear": lambda dt: _fwd_bwd(kernels.linear, _leaf((3000, 128), dt, 1), _leaf((384, 128), dt, 2, 0.1),
                                  _leaf((384,), dt, 3)),
    # a micro-batch of one short sequence through the tiny model's LM head (vocab 86): MKL's [5, 86] @ [86, 128]
    # input-gradient GEMM differed at 2 threads (the old plain-torch backward)
    "linear_few_rows": lambda dt: _fwd_bwd(kernels.linear, _leaf((5, 128), dt, 26), _leaf((86, 128), dt, 27, 0.1),
                                           _leaf((86,), dt, 28)),
    "token_logprobs_few_rows": lambda dt: _fwd_bwd(
        lambda h, w: kernels.token_logprobs(h, w, torch.tensor([3, 85, 0, 40, 7]), 0.7),
        _leaf((5, 128), dt, 29), _leaf((86, 128), dt, 30, 0.1)),
    "matmul_few_rows": lambda dt: _fwd_bwd(kernels.matmul, _leaf((5, 64), dt, 31), _leaf((64, 100), dt, 32, 0.1)),
    "linear_long_k": lambda dt: _fwd_bwd(kernels.linear, _leaf((700, 2048), dt, 1), _leaf((64, 2048), dt, 2, 0.02)),
    "matmul": lambda dt: _fwd_bwd(kernels.matmul, _leaf((1000, 96), dt, 4), _leaf((96, 300), dt, 5, 0.1)),
    "rms_norm": lambda dt: _fwd_bwd(lambda x, w: kernels.rms_norm(x, w, 1e-6), _leaf((3000, 128), dt, 6, 3.0),
                                    _leaf((128,), dt, 7)),
    "rope": lambda dt: _fwd_bwd(lambda x: kernels.rope(x, torch.arange(3000) % 64, kernels.rope_cache(64, 64, 1e4)),
                                _leaf((3000, 2, 64), dt, 8)),
    "silu_mul": lambda dt: _fwd_bwd(kernels.silu_mul, _leaf((1000, 384), dt, 9, 4.0), _leaf((1000, 384), dt, 10)),
    "attention_varlen": lambda dt: _fwd_bwd(lambda q, k, v: kernels.attention_varlen(q, k, v, _cu([40, 300, 1, 359])),
                                            _leaf((700, 4, 64), dt, 11), _leaf((700, 2, 64), dt, 12),
                                            _leaf((700, 2, 64), dt, 13)),
    "attention_paged": lambda dt: _fwd_bwd(
        lambda q, k, v: kernels.attention(q, k, v, _cu([1, 1, 200]), torch.tensor([90, 300, 200], dtype=torch.int32),
                                          torch.arange(60, dtype=torch.int32).view(3, 20), torch.zeros(3, dtype=torch.int32), 16),
        _leaf((202, 4, 64), dt, 14).detach(), _leaf((960, 2, 64), dt, 15).detach(), _leaf((960, 2, 64), dt, 16).detach()),
    "token_logprobs": lambda dt: _fwd_bwd(
        lambda h, w: kernels.token_logprobs(h, w, torch.randint(0, 9000, (500,), generator=torch.Generator().manual_seed(17)), 0.7),
        _leaf((500, 128), dt, 18), _leaf((9000, 128), dt, 19, 0.1)),
    "lm_logits": lambda dt: _fwd_bwd(kernels.lm_logits, _leaf((300, 128), dt, 20).detach(), _leaf((9000, 128), dt, 21, 0.1).detach()),
    "log_softmax": lambda dt: _fwd_bwd(kernels.log_softmax, _leaf((300, 9000), dt, 22, 3.0).detach()),
    "embedding_backward": lambda dt: _fwd_bwd(
        lambda w: F.embedding(torch.randint(0, 100, (40000,), generator=torch.Generator().manual_seed(23)), w),
        _leaf((100, 128), dt, 24)),
    "fixed_sum": lambda dt: _fwd_bwd(lambda x: fixed_sum(x.square()), _leaf((300001,), dt, 25)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_op_forward_backward_same_bits_for_1_2_3_threads(op, dtype):
    assert thread_dependence(lambda: OPS[op](dtype)) == []


@pytest.mark.parametrize("rows", [1, 5, 64, 200])
@pytest.mark.parametrize("width", [17, 86, 100, 128])
def test_linear_same_bits_for_up_to_32_threads(rows, width):
    """Machines with many cores: MKL's column edge kernels (N % 16 in 1..11) gave other bits from 3 threads
    (width 17) or 24 threads (width 86) on; fp32 forward and backward, 1 vs 2, 4, 8, 16, 24 and 32 threads."""
    make = lambda: _fwd_bwd(kernels.linear, _leaf((rows, 128), torch.float32, 33),
                            _leaf((width, 128), torch.float32, 34, 0.1))
    assert thread_dependence(make, threads=(1, 2, 4, 8, 16, 24, 32)) == []


def _grads(seed, sizes=(300000, 70000, 128, 5)):
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + i))
    return params


def test_clip_grad_norm_and_adamw_same_bits_for_1_2_3_threads():
    def run():
        params = _grads(0)
        total = torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01).step()
        return [total] + [p.grad for p in params] + [p.detach() for p in params]

    assert thread_dependence(run) == []


def test_fixed_sum_matches_torch_sum():
    x = torch.randn(12345, dtype=torch.float64)
    torch.testing.assert_close(fixed_sum(x), x.sum())
    assert fixed_sum(torch.zeros(0)).item() == 0.0 and fixed_sum(torch.tensor(3.0)).item() == 3.0


def test_harness_detects_thread_dependent_ops():
    """What these tests guard against: torch's own whole-tensor sums and softmax backward change their last
    bits with the thread count."""
    x = torch.randn(300001, generator=torch.Generator().manual_seed(0))
    assert thread_dependence(lambda: [x.sum()]) != []

    def softmax_backward():
        s = _leaf((4, 300, 300), torch.float32, 1, 3.0)
        return _fwd_bwd(lambda t: t.softmax(-1), s)

    assert thread_dependence(softmax_backward) != []


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_policy_loss_and_its_metrics_same_bits_for_1_2_3_threads(agg):
    """The trainer's loss over > 32768 tokens (where torch.sum splits per thread): value, metrics and gradient."""
    from onpolicy.trainer.losses import policy_loss

    seq_lens = [700] * 64  # 44,800 tokens
    n = sum(seq_lens)
    g = torch.Generator().manual_seed(5)
    lp0 = -torch.rand(n, generator=g, dtype=torch.float64).float()
    old = lp0 + torch.randn(n, generator=g) * 0.1
    adv = torch.randn(len(seq_lens), generator=g)

    def run():
        lp = lp0.clone().requires_grad_(True)
        out = policy_loss(lp, old, adv, seq_lens, agg=agg, max_tokens=700)
        (grad,) = torch.autograd.grad(out.loss, lp)
        return [out.loss, torch.tensor([out.pg_loss, out.clip_frac, out.ratio_mean], dtype=torch.float64), grad]

    assert thread_dependence(run) == []
