"""e2e helpers: configs derived from the shipped default (configs/tiny-cpu.yaml), thread-count restore."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "tiny-cpu.yaml"


def _tiny_cfg(output_dir, **overrides):
    """The default config, shrunk for CI; `overrides` are dotted keys ('trainer.steps') -> values.

    Keeps the default SFT warm-start (so rewards, advantages and gradients are non-zero); its cache is shared
    by the session's runs: `output_dir/../cache` (trainer.sft_cache_dir).
    """
    from onpolicy.config import parse_args

    small = {
        "trainer.steps": 3, "trainer.prompts_per_step": 4, "sampling.num_generations": 4,
        "logging.output_dir": str(output_dir), "logging.plot": False,
        "trainer.sft_cache_dir": str(Path(output_dir).parent / "cache"),
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


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture
def tiny_cfg(e2e_root, request):
    """`tiny_cfg(name="run", **{"trainer.steps": 2})` -> ExperimentConfig writing to `<e2e_root>/<test>-<name>`.

    All runs of a session are siblings, so they share one SFT cache (`<e2e_root>/cache`).
    """
    test = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)

    def make(name="run", **overrides):
        return _tiny_cfg(e2e_root / f"{test}-{name}", **overrides)

    return make


@pytest.fixture
def default_config_path():
    return DEFAULT_CONFIG
