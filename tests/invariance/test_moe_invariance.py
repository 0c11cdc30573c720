"""The MoE MLP is batch invariant on the CPU path: a token's output alone is torch.equal to its output inside
batches of many sizes and compositions (tokens routed to the same experts, copies of itself, random others),
also when router logits tie exactly at the top-k boundary (lowest expert id wins), for 1 and 2 threads."""
import pytest
import torch

from onpolicy.model import ModelConfig
from onpolicy.model.moe import MoEMLP, record_routing


def _layer(dtype: str, experts=8, top_k=2, normalize=True, seed=0):
    cfg = ModelConfig(architecture="qwen3_moe", hidden_size=64, intermediate_size=96, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, num_hidden_layers=1, dtype=dtype, num_experts=experts,
                      num_experts_per_tok=top_k, moe_intermediate_size=48, norm_topk_prob=normalize)
    layer = MoEMLP(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return layer


def _tied(layer):
    """Router rows: 2, 4, 6 equal to u and 1, 3, 5, 7 equal to -u (expert 0: zero): every token's top-2 is a
    3- or 4-way exact tie, broken by id."""
    with torch.no_grad():
        u = layer.gate.weight[2].clone()
        for e in (2, 4, 6):
            layer.gate.weight[e] = u
        for e in (1, 3, 5, 7):
            layer.gate.weight[e] = -u
        layer.gate.weight[0] = 0
    return layer


def _batches(x: torch.Tensor, i: int, seed=1):
    """Batches holding row x[i] at some position: many sizes, copies of it, random others."""
    g = torch.Generator().manual_seed(seed)
    row = x[i : i + 1]
    yield row, 0
    for n in (2, 3, 7, 16, 33, 64, 65, 130):
        others = x[torch.randint(0, x.shape[0], (n - 1,), generator=g)]
        at = int(torch.randint(0, n, (1,), generator=g))
        yield torch.cat([others[:at], row, others[at:]]), at
    yield row.expand(40, -1).contiguous(), 39  # every token on the same experts: several blocks per expert


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tied", [False, True])
def test_token_alone_equals_token_in_any_batch(dtype, tied):
    layer = _layer(dtype, normalize=not tied)
    if tied:
        _tied(layer)
    x = torch.randn(50, 64).to(layer.gate.weight.dtype)
    with torch.no_grad():
        for i in (0, 13, 49):
            with record_routing(layer) as rec:
                alone = layer(x[i : i + 1])
            if tied:
                logits = layer.gate(x[i : i + 1])[0]
                assert logits[2] == logits[4] == logits[6] and logits[1] == logits[3] == logits[5] == logits[7]
                want = [2, 4] if logits[2] > 0 else [1, 3]
                assert rec.forwards()[0][0, 0].tolist() == want
            for batch, at in _batches(x, i):
                assert torch.equal(layer(batch)[at], alone[0]), (dtype, tied, i, batch.shape[0])


def test_thread_count_does_not_change_the_output():
    layer = _layer("float32", experts=16, top_k=4)
    x = torch.randn(70, 64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = layer(x)
        torch.set_num_threads(2)
        with torch.no_grad():
            two = layer(x)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


def test_gradients_do_not_depend_on_thread_count():
    layer = _layer("float32", experts=8, top_k=2)
    x = torch.randn(30, 64)
    n, grads = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            layer.zero_grad()
            (layer(x) ** 2).sum().backward()
            grads.append([p.grad.clone() for p in layer.parameters()])
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_gpu_code_path_under_the_interpreter(monkeypatch):
    """The CUDA path (Triton gather GEMM, padded-input GEMM, Triton combine) run by the CPU interpreter on a tiny
    fp32 layer: close to the CPU path, and a token alone torch.equal to the same token inside batches."""
    import importlib

    moe_combine = importlib.import_module("onpolicy.kernels.moe_combine")  # the package exports a function so named
    moe_gemm = importlib.import_module("onpolicy.kernels.moe_gemm")

    layer = _layer("float32", experts=4, top_k=2)
    x = torch.randn(20, 64)
    with torch.no_grad():
        cpu = layer(x)
        monkeypatch.setattr(moe_gemm, "use_triton", lambda *t: True)
        monkeypatch.setattr(moe_combine, "use_triton", lambda *t: True)
        gpu_path = layer(x)
        torch.testing.assert_close(gpu_path, cpu, atol=1e-5, rtol=1e-5)
        for i in (0, 19):
            assert torch.equal(layer(x[i : i + 1])[0], gpu_path[i])
        assert torch.equal(layer(x[5:12])[3], gpu_path[8])
