"""What `invariant_mode(False)` switches: GEMMs (and attention / logprobs, tested in their files) go to torch's
defaults; the row-wise ops run their invariant kernels in both modes, so the non-invariant stack is not slowed
by unfused torch norms (the comparison isolates the cost of invariance). qk_norm_rope's CPU path is rms_norm
and rope themselves; its GPU kernel runs in both modes (tests/invariance/test_fused_gpu.py)."""
import sys

import pytest
import torch

from onpolicy import kernels
from onpolicy.kernels.activation import _SiluMul
from onpolicy.kernels.rmsnorm import _AddRMSNorm, _RMSNorm
from onpolicy.kernels.rope import _Rope


def _calls(monkeypatch, cls):
    """Count calls of an autograd Function's apply (the invariant path of a row-wise op)."""
    seen = []
    original = cls.apply

    def counting(*args):
        seen.append(1)
        return original(*args)

    monkeypatch.setattr(cls, "apply", counting)
    return seen


ROWWISE = {
    "rms_norm": (_RMSNorm, lambda x: kernels.rms_norm(x, torch.ones(64), 1e-6)),
    "add_rms_norm": (_AddRMSNorm, lambda x: kernels.add_rms_norm(x, x, torch.ones(64), 1e-6)),
    "silu_mul": (_SiluMul, lambda x: kernels.silu_mul(x, x)),
    "rope": (_Rope, lambda x: kernels.rope(x.view(8, 2, 32), torch.arange(8), kernels.rope_cache(8, 32, 1e4))),
}


@pytest.mark.parametrize("name", sorted(ROWWISE))
def test_rowwise_ops_run_their_kernels_in_both_modes(monkeypatch, name):
    cls, call = ROWWISE[name]
    seen = _calls(monkeypatch, cls)
    x = torch.randn(8, 64)
    want = call(x)
    with kernels.invariant_mode(False):
        got = call(x)
    assert len(seen) == 2
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)


def test_linear_switches_to_torch_default(monkeypatch):
    seen = []
    matmul_module = sys.modules[kernels.linear.__module__]
    monkeypatch.setattr(matmul_module, "linear_reference", lambda *a: seen.append(1) or torch.zeros(1))
    x, w = torch.randn(3, 16), torch.randn(4, 16)
    kernels.linear(x, w)
    assert not seen
    with kernels.invariant_mode(False):
        kernels.linear(x, w)
    assert seen == [1]
