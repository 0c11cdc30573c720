"""sequence_logprobs (the trainer's side): correct vs a plain-torch computation, batch invariant, equal to the
engine path's logprobs bitwise, differentiable, and strict about its inputs."""
import pytest
import torch

from onpolicy import kernels
from model_test_utils import packed, run_engine
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny

PROMPTS = [[1, 20, 33, 40, 5, 7, 9, 11, 13, 60], [1, 44, 45], [1, 70, 71, 72, 73, 74, 75]]
COMPLETIONS = [[30, 31, 32, 2], [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 61, 62, 63, 64, 65, 66], [2]]


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=2, num_hidden_layers=2)[0]


def plain_logprobs(model, prompt, completion, temperature):
    """One sequence, torch default ops, full log_softmax."""
    seq = prompt + completion
    with kernels.invariant_mode(False), torch.no_grad():
        ids, pos, meta = packed([seq])
        logits = model.logits(model(ids, pos, meta), temperature)
    logp = torch.log_softmax(logits[len(prompt) - 1 : len(seq) - 1], dim=-1)
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_plain_torch(model, temperature):
    with torch.no_grad():
        got = sequence_logprobs(model, PROMPTS, COMPLETIONS, temperature)
    assert [g.shape[0] for g in got] == [len(c) for c in COMPLETIONS]
    for g, p, c in zip(got, PROMPTS, COMPLETIONS):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, plain_logprobs(model, p, c, temperature), atol=1e-5, rtol=1e-5)


def test_batch_invariant(model):
    with torch.no_grad():
        together = sequence_logprobs(model, PROMPTS, COMPLETIONS)
        for order in ([2, 0, 1], [1]):
            alone = sequence_logprobs(model, [PROMPTS[i] for i in order], [COMPLETIONS[i] for i in order])
            for j, i in enumerate(order):
                assert torch.equal(alone[j], together[i])


def test_equals_engine_decode_logprobs(model):
    """The parity the RL loop checks: logprobs from engine-mode hidden states (prefill prompt, decode the
    completion token by token, two ragged sequences batched) == sequence_logprobs, bitwise."""
    seqs = [PROMPTS[0] + COMPLETIONS[0], PROMPTS[1] + COMPLETIONS[1]]
    plen = [len(PROMPTS[0]), len(PROMPTS[1])]
    steps = [([0, 0], plen)]
    for t in range(max(len(s) for s in seqs) - min(plen)):
        starts = [min(p + t, len(s)) for p, s in zip(plen, seqs)]
        steps.append((starts, [min(a + 1, len(s)) for a, s in zip(starts, seqs)]))
    hidden = run_engine(model, seqs, steps, tables=[[3, 0], [1, 4]], block_size=16, num_slots=5 * 16)
    offsets = [0, len(seqs[0])]
    with torch.no_grad():
        want = sequence_logprobs(model, PROMPTS[:2], COMPLETIONS[:2])
    for b in range(2):
        rows = hidden[offsets[b] + plen[b] - 1 : offsets[b] + len(seqs[b]) - 1]
        with torch.inference_mode():
            got = model.token_logprobs(rows, torch.tensor(COMPLETIONS[b]), 1.0)
        assert torch.equal(got, want[b]), f"seq {b}: max diff {(got - want[b]).abs().max().item()}"


def test_gradients_flow(model):
    model.zero_grad(set_to_none=True)
    out = sequence_logprobs(model, PROMPTS, COMPLETIONS)
    assert all(o.requires_grad for o in out)
    sum(o.sum() for o in out).backward()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.qkv_proj.weight",
                 "model.layers.1.mlp.gate_up_proj.weight", "model.layers.0.self_attn.q_norm.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)


def test_empty_completion_gives_empty_tensor(model):
    with torch.no_grad():
        out = sequence_logprobs(model, [[1, 2], [1, 3, 4]], [[], [5]])
    assert out[0].shape == (0,) and out[1].shape == (1,)


@pytest.mark.parametrize("prompts,completions,kw,match", [
    ([[1]], [[2], [3]], {}, "equal length"),
    ([], [], {}, "non-empty"),
    ([[]], [[2]], {}, r"prompts\[0\] is empty"),
    ([[1]], [[2]], {"temperature": 0.0}, "temperature"),
    ([[1]], [[10_000]], {}, "vocab_size"),
    ([[1] * 200], [[2] * 100], {}, "max_position_embeddings"),
])
def test_bad_inputs_raise(model, prompts, completions, kw, match):
    with pytest.raises(ValueError, match=match):
        sequence_logprobs(model, prompts, completions, **kw)
