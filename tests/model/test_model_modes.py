"""Training mode (packed varlen, no cache) vs engine mode (paged cache: prefill, chunked prefill, decode).

The hidden state of a token must be bitwise equal however it was computed (kernels are batch invariant);
inside `invariant_mode(False)` (torch's default ops) the modes only agree to allclose.
"""
import pytest
import torch

from onpolicy import kernels
from model_test_utils import empty_caches, packed, run_engine
from onpolicy.model.tiny import build_tiny

BLOCK = 16
SEQS = [[(7 * i + 3) % 80 + 4 for i in range(37)], [(5 * i + 1) % 80 + 4 for i in range(21)]]
TABLES = [[5, 2, 7], [0, 6]]  # scattered cache blocks
NUM_SLOTS = 8 * BLOCK


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=1, num_hidden_layers=2)[0].eval()


def training_hidden(model, seqs):
    ids, pos, meta = packed(seqs)
    with torch.no_grad():
        return model(ids, pos, meta)


def engine_hidden(model, seqs, chunks):
    return run_engine(model, seqs, chunks, TABLES, BLOCK, NUM_SLOTS)


def schedules():
    n0, n1 = len(SEQS[0]), len(SEQS[1])
    full = [([0, 0], [n0, n1])]
    chunked = [([0, 0], [10, 21]), ([10, 21], [30, 21]), ([30, 21], [n0, 21])]
    # prefill 30 / 15 tokens, then one token per step (crossing block boundaries at 32 and 16), ragged ends
    decode = [([0, 0], [30, 15])] + [([p, min(p - 15, n1)], [p + 1, min(p - 14, n1)]) for p in range(30, n0)]
    return {"prefill": full, "chunked_prefill": chunked, "decode": decode}


@pytest.mark.parametrize("name", list(schedules()))
def test_training_equals_engine_bitwise(model, name):
    want = training_hidden(model, SEQS)
    got = engine_hidden(model, SEQS, schedules()[name])
    assert torch.equal(got, want), f"{name}: max diff {(got - want).abs().max().item()}"


def test_single_sequence_equals_packed_bitwise(model):
    """A short sequence alone vs first / last in a packed batch (torch's default ops fail this)."""
    short = SEQS[1][:5]
    alone = training_hidden(model, [short])
    assert torch.equal(alone, training_hidden(model, [short] + SEQS)[:5])
    assert torch.equal(alone, training_hidden(model, SEQS + [short])[-5:])


def test_reference_mode_modes_agree(model):
    with kernels.invariant_mode(False):
        want = training_hidden(model, SEQS)
        got = engine_hidden(model, SEQS, schedules()["decode"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(want, training_hidden(model, SEQS), atol=1e-4, rtol=1e-4)  # vs invariant ops


def test_forward_rejects_bad_inputs(model):
    ids, pos, meta = packed(SEQS)
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float(), pos, meta)
    with pytest.raises(ValueError, match="positions"):
        model(ids, pos[:-1], meta)
    with pytest.raises(ValueError, match="meta"):
        model(ids, pos, None)
    with pytest.raises(ValueError, match="kv_caches"):
        model(ids, pos, meta, empty_caches(model, NUM_SLOTS)[:1])
    with pytest.raises(ValueError, match="slot_mapping"):
        model(ids, pos, meta, empty_caches(model, NUM_SLOTS))
