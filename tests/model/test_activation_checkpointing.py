"""Activation checkpointing per decoder layer: the recomputed forward gives the same bits (loss and every
parameter gradient `torch.equal` with it on and off), and it really recomputes (each layer runs twice)."""
import pytest
import torch

from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny
from onpolicy.model.transformer import DecoderLayer

PROMPTS = [[5, 9, 12], [7, 8], [20, 21, 22, 23]]
COMPLETIONS = [[30, 31, 32, 33, 34], [40, 41, 42], [50, 51]]


def _count_layer_calls(monkeypatch) -> list:
    """Counts DecoderLayer.forward entries (a forward hook would miss the recompute: it stops early)."""
    calls, forward = [], DecoderLayer.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DecoderLayer, "forward", counted)
    return calls


def _loss_and_grads(model):
    model.zero_grad(set_to_none=True)
    lps = sequence_logprobs(model, PROMPTS, COMPLETIONS)
    weights = torch.linspace(-1.0, 1.0, sum(len(c) for c in COMPLETIONS))
    loss = (torch.cat(lps) * weights).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checkpointing_gives_identical_bits(dtype, monkeypatch):
    model = build_tiny(seed=3, num_hidden_layers=3, dtype=dtype)[0].train()
    calls = _count_layer_calls(monkeypatch)

    loss_off, grads_off = _loss_and_grads(model)
    assert len(calls) == 3
    model.activation_checkpointing = True
    calls.clear()
    loss_on, grads_on = _loss_and_grads(model)
    assert len(calls) == 6  # forward + recompute in backward: checkpointing is really on
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    for name, g in grads_off.items():
        assert g.abs().sum() > 0, name  # every parameter gets a gradient (the test can see a difference)
        assert torch.equal(grads_on[name], g), name


def test_checkpointing_inactive_without_grad(monkeypatch):
    model = build_tiny(seed=3, num_hidden_layers=2)[0]
    model.activation_checkpointing = True
    calls = _count_layer_calls(monkeypatch)
    with torch.no_grad():
        sequence_logprobs(model, PROMPTS, COMPLETIONS)
    assert len(calls) == 2


def test_recompute_keeps_the_forward_kernel_mode_on_another_thread():
    """The backward (hence the recompute) runs on autograd's device thread on CUDA, which does not inherit
    `kernels.invariant_mode(False)`; the recompute must still use the forward's (torch default) ops. Emulated on
    the CPU by running backward on a new thread; fails with a CheckpointError if the recompute switches ops."""
    import threading

    from onpolicy import kernels

    model = build_tiny(seed=3, num_hidden_layers=2)[0].train()
    with kernels.invariant_mode(False):
        lps = sequence_logprobs(model, PROMPTS, COMPLETIONS)
        ref = torch.autograd.grad(torch.cat(lps).sum(), list(model.parameters()))
        model.activation_checkpointing = True
        loss = torch.cat(sequence_logprobs(model, PROMPTS, COMPLETIONS)).sum()
    errors = []

    def backward():
        try:
            loss.backward()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    worker = threading.Thread(target=backward)
    worker.start()
    worker.join()
    assert not errors, errors
    for p, g in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
