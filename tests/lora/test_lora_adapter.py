"""LoRA adapters on the projections: the adapted Linear vs a torch reference (allclose, fp32 and bf16), batch
invariance (a row alone == inside batches, torch.equal), untargeted blocks untouched, PEFT's init (B = 0 adds
exact zeros), a frozen base (only adapters get gradients), and the config's one-line refusals."""
import math

import pytest
import torch

from lora_test_utils import lora_tiny, packed
from onpolicy.config import ConfigError
from onpolicy.lora import LoraArgs, attach_lora, iter_adapters
from onpolicy.model.layers import Linear
from onpolicy.model.tiny import build_tiny

SEQS = [[5, 17, 29, 3, 42, 8, 1], [25, 7], [9, 9, 12, 33, 64, 2, 77, 11, 10, 0, 4, 6, 2]]


def _adapted_qkv(dtype, blocks=("q", "v")):
    torch.manual_seed(0)
    lin = Linear(32, 64 + 2 * 16, False, dtype, {"q": (0, 64), "k": (64, 16), "v": (80, 16)})
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape) * 0.1)
    from onpolicy.lora.adapter import LoraAdapter

    layout = [(n, rows, n in blocks) for n, (_, rows) in lin.shards.items()]
    lin.lora = LoraAdapter(layout, 32, r=4, scaling=2.0, dtype=dtype, device=torch.device("cpu"))
    with torch.no_grad():
        lin.lora.lora_A.copy_(torch.randn(lin.lora.lora_A.shape) * 0.2)
        lin.lora.lora_B.copy_(torch.randn(lin.lora.lora_B.shape) * 0.2)
    return lin


def _reference(lin, x):
    """fp32: x @ W.T + s * (x @ A_b.T) @ B_b.T on each targeted row block b, PEFT's computation."""
    y = x.float() @ lin.weight.float().t()
    for name in lin.lora.block_names():
        start, rows = lin.shards[name]
        a, b = lin.lora.block_A(name).float(), lin.lora.block_B(name).float()
        y[:, start:start + rows] += lin.lora.scaling * (x.float() @ a.t()) @ b.t()
    return y


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_adapted_linear_matches_reference(dtype, atol):
    lin = _adapted_qkv(dtype)
    x = torch.randn(7, 32).to(dtype)
    with torch.no_grad():
        out = lin(x)
    torch.testing.assert_close(out.float(), _reference(lin, x), atol=atol, rtol=atol)
    base = x.float() @ lin.weight.float().t()
    assert not torch.allclose(out.float(), base, atol=atol)  # the adapters really add something


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapted_linear_batch_invariant(dtype):
    lin = _adapted_qkv(dtype)
    x = torch.randn(70, 32).to(dtype)
    with torch.no_grad():
        alone = [lin(x[i:i + 1]) for i in (0, 33, 69)]
        for m in (5, 34, 70):
            batch = lin(x[:m])
            for i, row in zip((0, 33, 69), alone):
                if i < m:
                    assert torch.equal(batch[i:i + 1], row), (m, i)


def test_untargeted_block_is_the_base_projection():
    lin = _adapted_qkv(torch.bfloat16, blocks=("q", "v"))
    x = torch.randn(9, 32).to(torch.bfloat16)
    with torch.no_grad():
        out, adapter = lin(x), lin.lora
        lin.lora = None
        base = lin(x)
        lin.lora = adapter
    assert torch.equal(out[:, 64:80], base[:, 64:80])  # k: no adapter
    assert not torch.equal(out[:, :64], base[:, :64])


def test_peft_init_adds_exact_zeros():
    """A Kaiming-uniform within +-1/sqrt(in), B = 0: the adapted model's logits equal the base model's bitwise."""
    base, _ = build_tiny(seed=3, dtype="bfloat16", head_dim=64, num_hidden_layers=2)
    model, _ = build_tiny(seed=3, dtype="bfloat16", head_dim=64, num_hidden_layers=2)
    attach_lora(model, LoraArgs(r=4), seed=0)
    for _, _, adapter in iter_adapters(model):
        bound = 1 / math.sqrt(adapter.lora_A.shape[1])
        a = adapter.lora_A.float()
        assert a.abs().max() <= bound and a.std() > bound / 4
        assert float(adapter.lora_B.detach().abs().max()) == 0.0
    ids, pos, meta = packed(SEQS)
    with torch.no_grad():
        assert torch.equal(model.logits(model(ids, pos, meta)), base.logits(base(ids, pos, meta)))


def test_base_frozen_only_adapters_get_grads():
    model, _, _ = lora_tiny("float32", targets=["q_proj", "down_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (qkv: A, B.q; down: A, B.out)
    ids, pos, meta = packed(SEQS)
    model.token_logprobs(model(ids, pos, meta), ids).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    assert all(float(p.grad.abs().max()) > 0 for n, p in model.named_parameters() if n in trainable)


def test_seeded_init_repeats():
    a, _ = build_tiny(seed=0, head_dim=64, num_hidden_layers=1)
    b, _ = build_tiny(seed=0, head_dim=64, num_hidden_layers=1)
    pa, pb = attach_lora(a, LoraArgs(r=2), seed=5), attach_lora(b, LoraArgs(r=2), seed=5)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize("kw,field,allowed", [
    ({"dropout": 0.1}, "lora.dropout", "0.0"),
    ({"target_modules": ["lm_head"]}, "lora.target_modules", "q_proj"),
    ({"target_modules": []}, "lora.target_modules", "non-empty"),
    ({"r": -1}, "lora.r", ">= 0"),
    ({"alpha": 0}, "lora.alpha", "> 0"),
])
def test_config_refusals_name_the_field(kw, field, allowed):
    with pytest.raises(ConfigError) as e:
        LoraArgs(**kw)
    msg = str(e.value)
    assert msg.startswith(field) and allowed in msg and "\n" not in msg


def test_scaling_and_attach_refusals():
    assert LoraArgs(r=16, alpha=32).scaling == 2.0
    assert LoraArgs(r=16, alpha=32, use_rslora=True).scaling == 8.0
    model, _ = build_tiny(seed=0, head_dim=64, num_hidden_layers=1)
    with pytest.raises(ValueError, match="lora.r"):
        attach_lora(model, LoraArgs(r=0))
    attach_lora(model, LoraArgs(r=2))
    with pytest.raises(ValueError, match="already has adapters"):
        attach_lora(model, LoraArgs(r=2))


@pytest.mark.gpu
@pytest.mark.parametrize("blocks", [("q", "k", "v"), ("v",)])
def test_adapted_linear_cuda_bf16_invariant_and_close(blocks):
    """Qwen3-8B's qkv shape (4096 -> 4096 + 2 x 1024), r = 32, on the H100's Triton GEMMs: a row alone equals
    the row inside batches of 7 to 1000 rows (torch.equal), and the result is close to the fp32 reference."""
    from onpolicy.lora.adapter import LoraAdapter

    torch.manual_seed(0)
    lin = Linear(4096, 6144, False, torch.bfloat16, {"q": (0, 4096), "k": (4096, 1024), "v": (5120, 1024)}).cuda()
    layout = [(n, rows, n in blocks) for n, (_, rows) in lin.shards.items()]
    lin.lora = LoraAdapter(layout, 4096, r=32, scaling=2.0, dtype=torch.bfloat16, device=torch.device("cuda"))
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
        lin.lora.lora_A.normal_(0, 0.02)
        lin.lora.lora_B.normal_(0, 0.02)
        x = torch.randn(1000, 4096, device="cuda").to(torch.bfloat16)
        alone = [lin(x[i:i + 1]) for i in (0, 6, 999)]
        for m in (7, 64, 300, 1000):
            out = lin(x[:m])
            for i, row in zip((0, 6, 999), alone):
                if i < m:
                    assert torch.equal(out[i:i + 1], row), (m, i)
        torch.testing.assert_close(out.float(), _reference(lin, x), atol=3e-2, rtol=3e-2)


def test_moe_experts_refused_attention_allowed():
    """MoE layers: adapters on the attention projections only (the experts get none)."""
    from onpolicy.model import CausalLM
    from onpolicy.model.tiny import tiny_config

    cfg = tiny_config(architecture="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      num_hidden_layers=1, head_dim=64)
    with pytest.raises(ValueError, match=r"^lora\.target_modules: \['down_proj', 'gate_proj', 'up_proj'\] on a "
                                         r"model with MoE layers"):
        attach_lora(CausalLM(cfg), LoraArgs(r=2))
    params = attach_lora(CausalLM(cfg), LoraArgs(r=2, target_modules=["q_proj", "o_proj"]))
    assert len(params) == 4  # qkv: A, B; o: A, B
