"""Bad input to linear/matmul/rms_norm/rope/silu_mul raises ValueError naming the argument, before compute."""
import pytest
import torch

from onpolicy.kernels import linear, matmul, rms_norm, rope, rope_cache, silu_mul

f32, bf16 = torch.float32, torch.bfloat16


def _meta_w(n, k, dtype=f32):
    return torch.empty(n, k, dtype=dtype, device="meta")


CASES = [
    ("x has dtype int64", lambda: linear(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4))),
    ("weight has dtype float64", lambda: linear(torch.ones(2, 4), torch.ones(3, 4, dtype=torch.float64))),
    ("must equal weight.shape\\[1\\]", lambda: linear(torch.ones(2, 5), torch.ones(3, 4))),
    ("weight must be 2-D", lambda: linear(torch.ones(2, 4), torch.ones(4))),
    ("must have one dtype", lambda: linear(torch.ones(2, 4), torch.ones(3, 4, dtype=bf16))),
    ("bias must have shape", lambda: linear(torch.ones(2, 4), torch.ones(3, 4), torch.ones(4))),
    ("one device", lambda: linear(torch.ones(2, 4), _meta_w(3, 4))),
    ("x must be a torch.Tensor", lambda: linear([[1.0]], torch.ones(1, 1))),
    ("a.shape\\[1\\] \\(3\\) must equal b.shape\\[0\\] \\(4\\)", lambda: matmul(torch.ones(2, 3), torch.ones(4, 5))),
    ("must be 2-D", lambda: matmul(torch.ones(2, 3, 1), torch.ones(1, 5))),
    ("b has dtype int32", lambda: matmul(torch.ones(2, 3), torch.ones(3, 5, dtype=torch.int32))),
    ("x must be \\[..., H\\] and weight \\[H\\]", lambda: rms_norm(torch.ones(2, 8), torch.ones(4), 1e-6)),
    ("weight \\(torch.bfloat16\\) must have x's dtype", lambda: rms_norm(torch.ones(2, 8), torch.ones(8, dtype=bf16), 1e-6)),
    ("eps must be a positive float", lambda: rms_norm(torch.ones(2, 8), torch.ones(8), 0.0)),
    ("x has dtype int64", lambda: rms_norm(torch.ones(2, 8, dtype=torch.long), torch.ones(8), 1e-6)),
    ("gate .* and up .* must have one shape", lambda: silu_mul(torch.ones(2, 8), torch.ones(2, 4))),
    ("up has dtype int64", lambda: silu_mul(torch.ones(2, 8), torch.ones(2, 8, dtype=torch.long))),
    ("x must be \\[T, heads, D\\]", lambda: rope(torch.ones(2, 8), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4))),
    ("even D", lambda: rope(torch.ones(2, 1, 7), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4))),
    ("positions has dtype float32; allowed: int32, int64", lambda: rope(torch.ones(2, 1, 8), torch.zeros(2), rope_cache(4, 8, 1e4))),
    ("positions must be \\[T\\]", lambda: rope(torch.ones(2, 1, 8), torch.zeros(3, dtype=torch.long), rope_cache(4, 8, 1e4))),
    ("positions must lie in \\[0, 4\\)", lambda: rope(torch.ones(2, 1, 8), torch.tensor([0, 4]), rope_cache(4, 8, 1e4))),
    ("cache must be the \\[max_positions, head_dim=8\\] table from rope_cache, got \\(4, 16\\)", lambda: rope(torch.ones(2, 1, 8), torch.zeros(2, dtype=torch.long), rope_cache(4, 16, 1e4))),
    ("cache has dtype bfloat16; allowed: float32", lambda: rope(torch.ones(2, 1, 8), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4).bfloat16())),
    ("x has dtype int64; allowed: float32, bfloat16, float16", lambda: rope(torch.ones(2, 1, 8, dtype=torch.long), torch.zeros(2, dtype=torch.long), rope_cache(4, 8, 1e4))),
    ("head_dim must be a positive even int", lambda: rope_cache(4, 7, 1e4)),
    ("max_positions must be a positive int", lambda: rope_cache(0, 8, 1e4)),
    ("theta must be > 0", lambda: rope_cache(4, 8, -1.0)),
]


@pytest.mark.parametrize("match,call", CASES, ids=[c[0][:40] for c in CASES])
def test_bad_input_raises_value_error(match, call):
    with pytest.raises(ValueError, match=match):
        call()


def test_error_message_names_op_and_allowed_dtypes():
    with pytest.raises(ValueError, match=r"kernels\.linear: x has dtype int64; allowed: float32, bfloat16, float16"):
        linear(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4))
