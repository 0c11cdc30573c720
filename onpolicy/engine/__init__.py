"""The sampler: continuous batching over a paged, prefix-cached KV cache, on the trainer's own model.

`LLM(model, tokenizer, EngineConfig(...)).generate(prompts, SamplingParams(...))` -> RequestOutputs whose
logprobs are bitwise the trainer's (`onpolicy.model.sequence_logprobs`). See docs/architecture.md.
Beyond that page: `LLM.add_request(prompt, params) -> id`, `LLM.step() -> finished RequestOutputs`,
`LLM.has_unfinished()`, `LLM.stats`; `LLM(..., seed=)` (seeds for unseeded requests) and
`EngineConfig.kv_cache_memory_fraction` (auto num_blocks). `EngineConfig` is also the experiment config's
`engine` section. Ops are batch-invariant unless the caller is inside `kernels.invariant_mode(False)`.
Logprob tensors are returned on the CPU.
"""
from onpolicy.engine.llm import LLM
from onpolicy.engine.params import CompletionOutput, EngineConfig, RequestOutput, SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "RequestOutput", "SamplingParams"]
