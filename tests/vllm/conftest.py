"""vLLM backend tests (marker `vllm`): skipped when vllm is not importable. One vLLM engine per module (its
start-up takes ~10 s); VLLM_ENABLE_V1_MULTIPROCESSING=0 (the backend runs vLLM in this process). A module
with NEEDS_VLLM = False runs without vllm too."""
import os

import pytest

from onpolicy.engine.vllm_backend import vllm_installed

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HAVE_VLLM = vllm_installed()  # tests/ is on sys.path, so find_spec alone sees tests/vllm


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vllm)
            if not HAVE_VLLM and getattr(item.module, "NEEDS_VLLM", True):
                item.add_marker(pytest.mark.skip(reason="vllm is not installed (pip install -e '.[vllm]')"))
