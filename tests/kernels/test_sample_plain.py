"""kernels.sample_plain: the Triton kernel under TRITON_INTERPRET=1 (tiny shapes) against the torch path, both
against the plain-torch reference, the same token for a row alone or inside batches of any size, ties to the
lowest id, and one-line ValueErrors on bad input. The GPU kernel against the engine's `sample_tokens` is
tests/engine/test_engine_fast_gpu.py."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels import sampling as S
from onpolicy.kernels.logprobs_triton import LOG_SOFTMAX_BLOCK
from onpolicy.kernels.sampling_triton import ARGMAX_BLOCK


def _batch(m: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, vocab, generator=g) * 3
    idx = torch.arange(m)
    args = dict(greedy=idx % 4 == 0, seeds=idx * 1_000_003 - 2**61, sample_index=idx % 3, positions=idx % 11)
    return logits, args


@pytest.mark.parametrize("vocab", [37, ARGMAX_BLOCK + 5, LOG_SOFTMAX_BLOCK + 300])
def test_triton_interpreted_equals_torch_path(vocab):
    logits, args = _batch(6, vocab, seed=vocab)
    logits[0, [2, vocab - 1]] = logits[0].max() + 1.0  # row 0 is greedy: a tie at the max -> the lowest id
    torch_path = S.gumbel_max_torch(logits, **args)
    triton_path = S._sample_plain_triton(logits, args["greedy"], args["seeds"], args["sample_index"], args["positions"])
    assert torch.equal(triton_path, torch_path)
    assert int(torch_path[0]) == 2


def test_matches_reference_and_follows_the_seed():
    logits, args = _batch(16, 200, seed=3)
    got = kernels.sample_plain(logits, **args)
    assert torch.equal(got, kernels.sample_plain_reference(logits, **args))
    assert torch.equal(got[args["greedy"]], logits[args["greedy"]].argmax(-1))
    other = dict(args, seeds=args["seeds"] + 1)
    assert not torch.equal(kernels.sample_plain(logits, **other), got)  # the noise depends on the seed


@pytest.mark.parametrize("triton_path", [False, True])
def test_row_alone_equals_row_in_batches(triton_path):
    logits, args = _batch(9, 130, seed=5)

    def run(rows):
        sel = torch.tensor(rows)
        sub = {k: v[sel] for k, v in args.items()}
        if triton_path:
            return S._sample_plain_triton(logits[sel], sub["greedy"], sub["seeds"], sub["sample_index"],
                                          sub["positions"])
        return kernels.sample_plain(logits[sel], **sub)

    full = run(list(range(9)))
    for rows in ([4], [1, 2], [8, 0, 5], list(range(2, 9))):
        assert torch.equal(run(rows), full[torch.tensor(rows)]), rows


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(logits=a["logits"].double()), "logits has dtype float64"),
    (lambda a: a.update(logits=a["logits"][0]), "logits must be 2-D"),
    (lambda a: a.update(greedy=a["greedy"].long()), "greedy has dtype int64"),
    (lambda a: a.update(seeds=a["seeds"][:2]), r"seeds must have shape \[M\]"),
    (lambda a: a.update(positions=a["positions"].float()), "positions has dtype float32"),
])
def test_bad_input_is_one_line_value_error(change, match):
    logits, args = _batch(4, 50)
    call = dict(args, logits=logits)
    change(call)
    with pytest.raises(ValueError, match=f"kernels.sample_plain: {match}"):
        kernels.sample_plain(**call)
