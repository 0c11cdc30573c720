"""e2e helpers: configs derived from the shipped default (configs/tiny-cpu.yaml), thread-count restore."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "tiny-cpu.yaml"


def _tiny_cfg(tmp_path, name="run", **overrides):
    """The default config, shrunk for CI; `overrides` are dotted keys ('trainer.steps') -> values."""
    from onpolicy.config import parse_args

    small = {
        "trainer.steps": 3, "trainer.prompts_per_step": 4, "sampling.num_generations": 4,
        "trainer.sft_warmup_steps": 2, "logging.output_dir": str(tmp_path / name), "logging.plot": False,
    }
    small.update(overrides)
    argv = ["--config", str(DEFAULT_CONFIG)]
    for key, value in small.items():
        argv += [f"--{key}", value if isinstance(value, str) else repr(value).replace("True", "true")
                 .replace("False", "false").replace("None", "null")]
    return parse_args(argv)


@pytest.fixture(autouse=True)
def _restore_threads():
    """train() picks its CPU thread count; give the rest of the suite back the one it had."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg():
    """`tiny_cfg(tmp_path, name="run", **{"trainer.steps": 2})` -> ExperimentConfig (see `_tiny_cfg`)."""
    return _tiny_cfg


@pytest.fixture
def default_config_path():
    return DEFAULT_CONFIG
