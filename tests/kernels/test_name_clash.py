"""onpolicy's kernels are imported as `onpolicy.kernels`, so Hugging Face's `kernels` package (common next to
transformers/TRL, installed by the `test` extra) keeps its top-level name and cannot shadow ours, whichever
is installed first. transformers must still run a tiny Qwen3 with both present."""
import os
import subprocess
import sys

import pytest
import torch

from onpolicy import kernels

REPO_KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernels")


def test_onpolicy_kernels_is_this_checkouts_folder():
    assert os.path.dirname(os.path.abspath(kernels.__file__)) == REPO_KERNELS
    assert hasattr(kernels, "token_logprobs") and hasattr(kernels, "invariant_mode")


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_hub_kernels_package_does_not_shadow_ours(tmp_path):
    """onpolicy installed next to HF `kernels`: a user's script (a fresh interpreter outside the checkout) gets
    theirs for `import kernels` and ours for `onpolicy.kernels`, in either import order."""
    if not (_installed("kernels") and _installed("onpolicy")):
        pytest.skip("needs onpolicy and Hugging Face's kernels installed (pip install -e '.[test]' does both)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for order in ("import kernels, onpolicy.kernels as ok", "import onpolicy.kernels as ok, kernels"):
        code = (f"{order}, importlib; m = importlib.import_module('onpolicy.kernels.matmul'); "
                "print(kernels.__file__, ok.__file__, m.__file__, hasattr(kernels, 'get_kernel'))")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        theirs, ours, matmul, has_get_kernel = out.stdout.split()
        if not ours.startswith(REPO_KERNELS):
            pytest.skip(f"the installed onpolicy is another checkout ({ours})")
        assert not theirs.startswith(REPO_KERNELS) and has_get_kernel == "True"
        assert ours == os.path.join(REPO_KERNELS, "__init__.py") and matmul.startswith(REPO_KERNELS)


def test_checkout_root_on_sys_path_still_gives_hub_kernels():
    """`python -m pytest` / `python -c` from the checkout root put kernels/ on the path as top-level `kernels`;
    it must hand the name back to Hugging Face's package (transformers imports it by name) when installed."""
    root = os.path.dirname(REPO_KERNELS)
    code = "import kernels, onpolicy.kernels as ok; print(kernels.__file__, ok.__file__, hasattr(kernels, 'get_kernel'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    if not _installed("kernels"):
        return  # nothing to hand back: the name stays with the folder, as for any module beside a script
    theirs, ours, has_get_kernel = out.stdout.split()
    assert not theirs.startswith(REPO_KERNELS) and has_get_kernel == "True"
    assert ours == os.path.join(REPO_KERNELS, "__init__.py")


def test_tiny_transformers_qwen3_forward():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=64)
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, 97) and torch.isfinite(logits).all()
