"""fp32 master weights behind a bf16 model (issue 10): small learning rates are not rounded away, the model's
bf16 parameters equal bf16(master) bitwise after every step, fp32 models get plain AdamW, checkpoints restore."""
import pytest
import torch

from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny
from onpolicy.trainer.checkpoint import load_checkpoint, save_checkpoint
from onpolicy.trainer.precision import MasterWeightAdamW

PROMPTS = [[5, 9, 12], [7, 8], [20, 21, 22, 23]]
COMPLETIONS = [[30, 31, 32, 33, 34], [40, 41, 42], [50, 51]]
ADAM = dict(lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)


def _backward(model, seqs=slice(None), scale=1.0):
    lps = sequence_logprobs(model, PROMPTS[seqs], COMPLETIONS[seqs])
    (-torch.cat(lps).mean() * scale).backward()


def _changed_frac(before, after) -> float:
    changed = sum(int((a != b).sum()) for a, b in zip(before, after))
    return changed / sum(a.numel() for a in before)


def test_bf16_masters_keep_small_updates():
    model = build_tiny(seed=0, num_hidden_layers=2, dtype="bfloat16")[0].train()
    params = list(model.parameters())
    ptrs = [p.data_ptr() for p in params]
    opt = MasterWeightAdamW(params, **ADAM)
    start = [m.detach().clone() for m in opt.masters]
    for _ in range(3):
        _backward(model)
        opt.accumulate_grads()
        assert all(m.grad.abs().sum() > 0 for m in opt.masters)  # a non-zero gradient for every tensor
        opt.step()
        opt.zero_grad()
        for p, m in zip(params, opt.masters):
            assert m.dtype == torch.float32 and p.dtype == torch.bfloat16
            assert torch.equal(p, m.to(torch.bfloat16))  # the one bf16 copy is bf16(master), bitwise
    assert [p.data_ptr() for p in model.parameters()] == ptrs  # same tensors: the engine keeps them
    master_frac = _changed_frac(start, [m.detach() for m in opt.masters])
    assert all(s.dtype == torch.float32 for s in opt.optimizer.state[opt.masters[0]].values() if s.dim())

    plain = build_tiny(seed=0, num_hidden_layers=2, dtype="bfloat16")[0].train()
    before = [p.detach().clone() for p in plain.parameters()]
    adam = torch.optim.AdamW(plain.parameters(), **ADAM)
    for _ in range(3):
        _backward(plain)
        adam.step()
        adam.zero_grad()
    plain_frac = _changed_frac(before, [p.detach() for p in plain.parameters()])
    print(f"lr 1e-6, 3 steps: masters changed {master_frac:.4f}, plain bf16 AdamW changed {plain_frac:.4f}")
    assert master_frac > 0.99
    assert plain_frac < 0.10


def test_fp32_model_is_plain_adamw_bitwise():
    a = build_tiny(seed=1, num_hidden_layers=2)[0].train()
    b = build_tiny(seed=1, num_hidden_layers=2)[0].train()
    opt_a = MasterWeightAdamW(a.parameters(), lr=1e-3, weight_decay=0.01)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.01)
    assert all(m is p for m, p in zip(opt_a.masters, a.parameters()))
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            _backward(model, slice(0, 2))
            _backward(model, slice(2, 3))
            if opt is opt_a:
                opt.accumulate_grads()  # a no-op for fp32
                norm_a = opt.clip_grad_norm_(0.5)
            else:
                norm_b = float(torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
            opt.step()
            opt.zero_grad()
        assert norm_a == norm_b
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_micro_batch_grads_accumulate_in_fp32():
    model = build_tiny(seed=2, num_hidden_layers=2, dtype="bfloat16")[0].train()
    opt = MasterWeightAdamW(model.parameters(), **ADAM)
    expect = None
    for seqs in (slice(0, 1), slice(1, 2), slice(2, 3)):
        _backward(model, seqs, scale=1e3)
        grads = [p.grad.float() for p in model.parameters()]
        expect = grads if expect is None else [e + g for e, g in zip(expect, grads)]
        opt.accumulate_grads()
        assert all(p.grad is None for p in model.parameters())
    for m, e in zip(opt.masters, expect):
        assert m.grad.dtype == torch.float32 and torch.equal(m.grad, e)
    # the same three grads summed in bf16 lose bits somewhere (so the test above can tell the difference)
    model.zero_grad(set_to_none=True)
    for seqs in (slice(0, 1), slice(1, 2), slice(2, 3)):
        _backward(model, seqs, scale=1e3)
    assert any(not torch.equal(p.grad.float(), e) for p, e in zip(model.parameters(), expect))


def test_state_dict_round_trip_continues_bitwise(tmp_path):
    def fresh():
        model = build_tiny(seed=3, num_hidden_layers=2, dtype="bfloat16")[0].train()
        return model, MasterWeightAdamW(model.parameters(), **ADAM)

    def train_step(model, opt):
        _backward(model)
        opt.step()
        opt.zero_grad()

    a, opt_a = fresh()
    for _ in range(2):
        train_step(a, opt_a)
    path = save_checkpoint(tmp_path, 2, a, optimizer=opt_a)  # bf16 policy + masters + AdamW state
    b, opt_b = fresh()
    load_checkpoint(path, model=b, optimizer=opt_b, restore_rng=False)
    state = opt_b.state_dict()
    for model, opt in ((a, opt_a), (b, opt_b)):
        train_step(model, opt)
    for ma, mb in zip(opt_a.masters, opt_b.masters):
        assert torch.equal(ma, mb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="'optimizer' and 'masters'"):
        opt_b.load_state_dict(opt_b.optimizer.state_dict())
    with pytest.raises(ValueError, match="do not match"):
        opt_b.load_state_dict({"optimizer": state["optimizer"], "masters": state["masters"][:-1]})
