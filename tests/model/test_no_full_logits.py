"""Training never materialises a [tokens, vocab] logits tensor: every op output of the trainer's forward and
backward (recorded with a TorchDispatchMode) is checked on a model whose vocab spans several VOCAB_CHUNKs."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from onpolicy import kernels
from onpolicy.kernels.logprobs import VOCAB_CHUNK
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny

VOCAB = 3 * VOCAB_CHUNK + 17
PROMPTS = [[5, 9, 12], [7, 8]]
COMPLETIONS = [[30, 31, 32, 33, 34, 35, 36], [40, 41, 42, 43, 44, 45]]


class _WidestOutput(TorchDispatchMode):
    """Records the largest last dimension of any 2-D op output that has at least `rows` rows."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.widest = rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] >= self.rows:
                self.widest = max(self.widest, t.shape[1])
        return out


def _widest_logits(invariant: bool) -> int:
    model = build_tiny(seed=0, num_hidden_layers=1, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                       num_attention_heads=2, num_key_value_heads=1)[0].train()
    rows = sum(len(c) for c in COMPLETIONS)
    mode = _WidestOutput(rows)
    with kernels.invariant_mode(invariant), mode:
        lps = sequence_logprobs(model, PROMPTS, COMPLETIONS)
        torch.cat(lps).sum().backward()
    assert model.lm_head_weight.grad.abs().sum() > 0
    return mode.widest


def test_invariant_training_holds_one_vocab_chunk_of_logits():
    assert _widest_logits(invariant=True) == VOCAB_CHUNK


def test_fast_path_training_holds_one_vocab_chunk_of_logits():
    """invariant: false (torch's default ops) chunks the vocab too (issue 10)."""
    assert _widest_logits(invariant=False) <= VOCAB_CHUNK
