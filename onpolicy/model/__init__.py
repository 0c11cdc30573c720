"""onpolicy.model: one decoder on `kernels/` ops for every family in `architectures.ARCHITECTURES`, HF
checkpoint I/O, tiny models.

One `CausalLM` serves the sampler (engine mode, paged KV cache) and the trainer (packed varlen training).
Imports no datasets/wandb/trl; safetensors/transformers/tokenizers are imported where used.
"""
from onpolicy.model.config import ModelConfig
from onpolicy.model.loading import load_pretrained, load_tokenizer, save_pretrained
from onpolicy.model.logprobs import sequence_logprobs
from onpolicy.model.metadata import AttentionMetadata
from onpolicy.model.tiny import CharTokenizer, build_tiny, qwen3_0_6b_config, tiny_config
from onpolicy.model.transformer import CausalLM, init_weights

__all__ = [
    "AttentionMetadata", "CausalLM", "CharTokenizer", "ModelConfig", "build_tiny", "init_weights",
    "load_pretrained", "load_tokenizer", "qwen3_0_6b_config", "save_pretrained", "sequence_logprobs",
    "tiny_config",
]
