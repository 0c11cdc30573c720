"""The sampler: continuous batching over a paged, prefix-cached KV cache, on the trainer's own model.

`LLM(model, tokenizer, EngineConfig(...)).generate(prompts, SamplingParams(...))` -> RequestOutputs whose
logprobs are bitwise the trainer's (`onpolicy.model.sequence_logprobs`). See docs/architecture.md.
"""
from onpolicy.engine.llm import LLM
from onpolicy.engine.params import CompletionOutput, EngineConfig, RequestOutput, SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "RequestOutput", "SamplingParams"]
