"""scripts/ is a package run as `python -m scripts.<name>` from the checkout root: no script edits sys.path,
every one imports as a module, and the shared helpers (scripts.common) build the models the scripts name."""
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py") and f != "__init__.py")


def test_no_script_edits_sys_path():
    offenders = [name for name in SCRIPTS
                 if "sys.path" in open(os.path.join(ROOT, "scripts", f"{name}.py")).read()]
    assert offenders == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_as_a_module(name):
    if name == "sweep_linear":
        pytest.importorskip("triton")  # it times Triton configs directly
    mod = importlib.import_module(f"scripts.{name}")
    assert mod.__doc__, f"scripts/{name}.py needs a docstring saying what it does and leaves out"


def test_help_runs_as_a_module_from_the_checkout_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "scripts.doctor", "--help"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--model" in out.stdout


def test_build_model_names():
    from scripts.common import build_model

    model, tok = build_model("tiny", "cpu", "float32")
    assert not model.training and tok is not None and model.config.head_dim == 64
    with pytest.raises(ValueError, match="must be a local HF model directory"):
        build_model("no/such/checkpoint", "cpu", "float32")
