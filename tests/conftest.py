"""Test setup: determinism on, Triton interpreter on CPU-only machines (tiny shapes), `gpu` marker skips."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit runs: lets CPU tests execute the Triton kernels (slowly).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from onpolicy import determinism  # noqa: E402

determinism.enable(seed=0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run with -m gpu on the H100)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
