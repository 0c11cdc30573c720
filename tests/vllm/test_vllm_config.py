"""engine.backend: declared choices, native by default, and a clear one-line error before any compute when
vllm is asked for but not installed. Runs with or without vllm."""
import importlib.util
from pathlib import Path

import pytest

NEEDS_VLLM = False
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


def _cfg(tmp_path, *extra):
    from onpolicy.config import parse_args

    return parse_args(["--config", str(DEFAULT_CONFIG), "--logging.output_dir", str(tmp_path), *extra])


def test_backend_choices(tmp_path):
    from onpolicy.config import ConfigError

    assert _cfg(tmp_path).engine.backend == "native"
    assert _cfg(tmp_path, "--engine.backend", "vllm").engine.backend == "vllm"
    with pytest.raises(ConfigError, match=r"engine.backend: 'sglang' is not allowed; allowed: native, vllm"):
        _cfg(tmp_path, "--engine.backend", "sglang")


def test_missing_vllm_fails_before_compute(tmp_path, monkeypatch):
    from onpolicy.model import tiny
    from onpolicy.trainer import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the backend error was raised")

    monkeypatch.setattr(tiny, "build_tiny", no_compute)
    with pytest.raises(ValueError, match=r"^engine.backend: 'vllm' needs vLLM installed"):
        train(_cfg(tmp_path, "--engine.backend", "vllm"), log=lambda *a: None)
