"""GPU (H100): the fused row-wise kernels equal the unfused kernels bitwise (`torch.equal`), forward and backward,
across batch sizes, positions and ragged packing, fp32 and bf16, on Qwen3 shapes; and a decoder layer's decode
forward issues 8 fewer launches with them (counted with torch.profiler against the unfused ops patched in)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from onpolicy import kernels
from onpolicy.kernels import add_rms_norm, rms_norm, rope_cache
from onpolicy.kernels.qk_norm_rope import _qk_norm_rope_unfused, _QKNormRope, qk_norm_rope
from onpolicy.model import CausalLM, ModelConfig
from onpolicy.model.metadata import AttentionMetadata

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16]
BATCH_SIZES = [1, 2, 3, 7, 16, 33, 64, 127, 256, 257, 1000]
HEADS = [(16, 8, 128), (32, 8, 128), (8, 4, 64)]  # Qwen3-0.6B, Qwen3-8B, the parity tests' model


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [64, 128, 1024, 2048, 4096, 8192])
def test_add_rms_norm_equals_unfused_gpu(dtype, H):
    w = (1 + 0.3 * torch.randn(H, generator=_gen(H))).to("cuda", dtype)
    for n in BATCH_SIZES:
        g = _gen(n)
        x, r = ((3 * torch.randn(n, H, generator=g)).to("cuda", dtype) for _ in range(2))
        h, y = add_rms_norm(x, r, w, 1e-6)
        assert torch.equal(h, r + x), n
        assert torch.equal(y, rms_norm(r + x, w, 1e-6)), n
        pos = int(torch.randint(0, n, (1,), generator=g))
        h1, y1 = add_rms_norm(x[pos : pos + 1], r[pos : pos + 1], w, 1e-6)
        assert torch.equal(h1, h[pos : pos + 1]) and torch.equal(y1, y[pos : pos + 1]), n


def _qkv(T, n_q, n_kv, D, dtype, seed, max_pos=4096):
    g = _gen(seed)
    qkv = (2 * torch.randn(T, (n_q + 2 * n_kv) * D, generator=g)).to("cuda", dtype)
    pos = torch.randint(0, max_pos, (T,), generator=g).cuda()
    return qkv, pos


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_kv,D", HEADS)
@pytest.mark.parametrize("norm", [True, False])
def test_qk_norm_rope_equals_unfused_gpu(dtype, n_q, n_kv, D, norm):
    cache = rope_cache(4096, D, 1_000_000.0, "cuda")
    qw, kw = ((1 + 0.3 * torch.randn(D, generator=_gen(D + i))).to("cuda", dtype) for i in range(2))
    weights = (qw, kw) if norm else (None, None)
    for T in BATCH_SIZES:
        qkv, pos = _qkv(T, n_q, n_kv, D, dtype, seed=T)
        fused = qk_norm_rope(qkv, pos, cache, n_q, n_kv, *weights, 1e-6)
        unfused = _qk_norm_rope_unfused(qkv, pos, cache, n_q, n_kv, *weights, 1e-6)
        assert all(torch.equal(a, b) for a, b in zip(fused, unfused)), T
        i = T // 2
        alone = qk_norm_rope(qkv[i : i + 1], pos[i : i + 1], cache, n_q, n_kv, *weights, 1e-6)
        assert all(torch.equal(a[0], b[i]) for a, b in zip(alone, fused)), T


def test_qk_norm_rope_runs_its_kernel_in_both_modes_gpu(monkeypatch):
    """invariant_mode(False) keeps the fused kernel (row-wise ops cost nothing to make invariant)."""
    seen, original = [], _QKNormRope.apply
    monkeypatch.setattr(_QKNormRope, "apply", lambda *a: seen.append(1) or original(*a))
    cache = rope_cache(64, 128, 1_000_000.0, "cuda")
    qkv, pos = _qkv(5, 16, 8, 128, torch.bfloat16, seed=3, max_pos=64)
    want = qk_norm_rope(qkv, pos, cache, 16, 8)
    with kernels.invariant_mode(False):
        got = qk_norm_rope(qkv, pos, cache, 16, 8)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_qk_norm_rope_ragged_sequences_gpu():
    """Sequences packed one after another (positions restart per sequence) == each sequence alone."""
    n_q, n_kv, D = HEADS[0]
    cache = rope_cache(4096, D, 1_000_000.0, "cuda")
    qw, kw = ((1 + 0.3 * torch.randn(D, generator=_gen(i))).to("cuda", torch.bfloat16) for i in range(2))
    lens = [1, 5, 17, 64, 3, 100]
    seqs = [_qkv(n, n_q, n_kv, D, torch.bfloat16, seed=n)[0] for n in lens]
    poss = [torch.arange(n, device="cuda") + 7 * n for n in lens]
    packed = qk_norm_rope(torch.cat(seqs), torch.cat(poss), cache, n_q, n_kv, qw, kw, 1e-6)
    start = 0
    for qkv, pos in zip(seqs, poss):
        alone = qk_norm_rope(qkv, pos, cache, n_q, n_kv, qw, kw, 1e-6)
        assert all(torch.equal(a, b[start : start + qkv.shape[0]]) for a, b in zip(alone, packed))
        start += qkv.shape[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_equals_unfused_gpu(dtype):
    """Training: gradients through the fused ops == through the unfused ops, `torch.equal`."""
    n_q, n_kv, D = HEADS[0]
    T = 300
    cache = rope_cache(4096, D, 1_000_000.0, "cuda")
    qkv, pos = _qkv(T, n_q, n_kv, D, dtype, seed=1)
    qw, kw = ((1 + 0.3 * torch.randn(D, generator=_gen(9 + i))).to("cuda", dtype) for i in range(2))
    g = _gen(2)
    out_grads = [torch.randn(T, n, D, generator=g).to("cuda", dtype) for n in (n_q, n_kv, n_kv)]

    def qk_grads(fn):
        leaves = [t.clone().requires_grad_() for t in (qkv, qw, kw)]
        outs = fn(leaves[0], leaves[1], leaves[2])
        return torch.autograd.grad(outs, leaves, out_grads)

    fused = qk_grads(lambda a, b, c: _QKNormRope.apply(a, b, c, pos, cache, n_q, n_kv, 1e-6))
    unfused = qk_grads(lambda a, b, c: _qk_norm_rope_unfused(a, pos, cache, n_q, n_kv, b, c, 1e-6))
    assert all(torch.equal(a, b) for a, b in zip(fused, unfused))

    x, r = ((3 * torch.randn(T, 1024, generator=g)).to("cuda", dtype) for _ in range(2))
    w = (1 + 0.3 * torch.randn(1024, generator=g)).to("cuda", dtype)
    gy, gh = (torch.randn(T, 1024, generator=g).to("cuda", dtype) for _ in range(2))

    def add_grads(fused_op):
        xs, rs, ws = (t.clone().requires_grad_() for t in (x, r, w))
        h, y = add_rms_norm(xs, rs, ws, 1e-6) if fused_op else (rs + xs, rms_norm(rs + xs, ws, 1e-6))
        return torch.autograd.grad((h, y), (xs, rs, ws), (gh, gy))

    assert all(torch.equal(a, b) for a, b in zip(add_grads(True), add_grads(False)))


def _decode_kernels(n_layers, batch, context=100, block_size=16):
    """CUDA kernels of one engine-mode decode forward (`batch` sequences at `context` tokens) of a
    Qwen3-0.6B-shaped model, in launch order."""
    cfg = ModelConfig(architecture="qwen3", vocab_size=32000, hidden_size=1024, intermediate_size=3072,
                      num_hidden_layers=n_layers, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=4096, tie_word_embeddings=True, dtype="bfloat16")
    model = CausalLM(cfg).cuda().eval()
    per_seq = context // block_size + 1
    caches = [tuple(torch.zeros(batch * per_seq * block_size, 8, 128, device="cuda", dtype=torch.bfloat16)
                    for _ in range(2)) for _ in range(n_layers)]
    i32 = dict(device="cuda", dtype=torch.int32)
    table = torch.arange(batch * per_seq, **i32).reshape(batch, per_seq)
    slots = table[:, (context - 1) // block_size].long() * block_size + (context - 1) % block_size
    meta = AttentionMetadata(torch.arange(batch + 1, **i32), torch.full((batch,), context, **i32), table,
                             torch.zeros(batch, **i32), block_size, slots)
    ids, pos = torch.full((batch,), 5, device="cuda"), torch.full((batch,), context - 1, device="cuda")
    with torch.no_grad():
        model(ids, pos, meta, caches)  # compile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(ids, pos, meta, caches)
            torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _layer_kernels(batch):
    """Kernels of one steady-state decoder layer: a 2-layer forward minus a 1-layer forward."""
    two, one = _decode_kernels(2, batch), _decode_kernels(1, batch)
    return len(two) - len(one), [n[:40] for n in two]


# q/k: 2 norms + 2 RoPEs (+ 3 copies of the q/k/v views, which are contiguous at one token) -> 1 launch;
# each of the two residual adds joins its norm
@pytest.mark.parametrize("batch,saved", [(1, 5), (4, 8)])
def test_decode_layer_launch_count(monkeypatch, batch, saved):
    fused_count, fused_names = _layer_kernels(batch)

    def add_rms_norm_unfused(x, residual, weight, eps):
        h = residual + x
        return h, rms_norm(h, weight, eps)

    monkeypatch.setattr(kernels, "add_rms_norm", add_rms_norm_unfused)
    monkeypatch.setattr(kernels, "qk_norm_rope", _qk_norm_rope_unfused)
    unfused_count, unfused_names = _layer_kernels(batch)
    print(f"\nlaunches per decoder layer (decode, batch {batch}): unfused {unfused_count}, fused {fused_count}")
    print("fused 2-layer forward:", fused_names)
    print("unfused 2-layer forward:", unfused_names)
    assert fused_count == unfused_count - saved
