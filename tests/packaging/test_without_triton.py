"""The core install has no triton (CUDA torch brings its own; CPU runs never launch a Triton kernel): with triton
unimportable, the kernels, model, engine and trainer must import and a tiny model must sample and train a step."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = """
import sys
class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTriton())
import torch
from onpolicy import kernels
from onpolicy.engine import LLM, SamplingParams
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny
import onpolicy.trainer
assert "triton" not in sys.modules
model, _ = build_tiny(seed=0)
out = LLM(model).generate([[1, 2, 3]], SamplingParams(max_tokens=4, seed=1))[0].outputs[0]
lp = sequence_logprobs(model, [[1, 2, 3]], [out.token_ids])[0]
assert torch.equal(lp, out.logprobs), (lp, out.logprobs)
lp.sum().backward()
print("ok")
"""


def test_core_runs_without_triton():
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
