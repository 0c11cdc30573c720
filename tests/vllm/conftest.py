"""vLLM backend tests (marker `vllm`): skipped when vllm is not importable. One vLLM engine per module (its
start-up takes ~10 s); VLLM_ENABLE_V1_MULTIPROCESSING=0 (the backend runs vLLM in this process). A module
with NEEDS_VLLM = False runs without vllm too."""
import importlib.util
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vllm)
            if not HAVE_VLLM and getattr(item.module, "NEEDS_VLLM", True):
                item.add_marker(pytest.mark.skip(reason="vllm is not installed (pip install -e '.[vllm]')"))
