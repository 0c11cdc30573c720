"""Engine test fixtures: a one-layer tiny model (module-scoped; the model is read-only) and a fresh engine on it."""
import pytest

from onpolicy.engine import LLM, EngineConfig
from onpolicy.model.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=2, head_dim=64, num_hidden_layers=1)
    return model.eval(), tok


@pytest.fixture()
def llm(tiny):
    return LLM(tiny[0], tiny[1], EngineConfig(num_blocks=64, block_size=8))
