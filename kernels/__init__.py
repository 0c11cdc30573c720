"""Batch-invariant ops shared by onpolicy's sampler and trainer (one op a file).

Each public op runs a Triton kernel on CUDA tensors and a batch-invariant torch path on CPU tensors. Inside
`invariant_mode(False)` the ops whose invariance costs speed -- GEMMs, attention, LM-head logprobs -- run torch's
defaults (cuBLAS, SDPA) instead; the row-wise ops (RMSNorm, RoPE, SiLU, their fusions) are invariant at no cost
and run the same kernels in both modes, as a fast non-invariant stack fuses them too. See docs/invariance.md.
Imported as `onpolicy.kernels`; imported as top-level `kernels` (the checkout root on sys.path) it hands that
name back to Hugging Face's `kernels` package when that is installed.
"""
if __name__ == "kernels":
    import onpolicy

    onpolicy._hand_back_top_level_kernels()
from onpolicy.kernels._common import invariant_mode, is_invariant
from onpolicy.kernels.activation import gelu_tanh_mul, gelu_tanh_mul_reference, silu_mul, silu_mul_reference
from onpolicy.kernels.attention import attention, attention_reference, attention_varlen, write_kv_cache
from onpolicy.kernels.logprobs import (
    lm_logits,
    logits_token_logprobs,
    lm_logits_reference,
    log_softmax,
    log_softmax_reference,
    token_logprobs,
    token_logprobs_reference,
)
from onpolicy.kernels.matmul import linear, linear_reference, matmul, matmul_reference
from onpolicy.kernels.moe_combine import moe_combine
from onpolicy.kernels.moe_gemm import grouped_linear, grouped_linear_reference, moe_block_m
from onpolicy.kernels.moe_routing import MoeLayout, moe_layout, moe_route, moe_route_reference
from onpolicy.kernels.qk_norm_rope import qk_norm_rope
from onpolicy.kernels.rmsnorm import add_rms_norm, rms_norm, rms_norm_reference
from onpolicy.kernels.rope import rope, rope_cache, rope_reference, rope_table
from onpolicy.kernels.sampling import sample_plain, sample_plain_reference

__all__ = [
    "add_rms_norm", "attention", "gelu_tanh_mul", "gelu_tanh_mul_reference", "attention_reference", "attention_varlen", "invariant_mode", "is_invariant",
    "linear", "linear_reference", "lm_logits", "lm_logits_reference", "log_softmax", "logits_token_logprobs",
    "log_softmax_reference", "matmul", "matmul_reference", "MoeLayout", "grouped_linear", "grouped_linear_reference",
    "moe_block_m", "moe_combine", "moe_layout", "moe_route", "moe_route_reference", "qk_norm_rope", "rms_norm",
    "rms_norm_reference", "rope",
    "rope_cache", "rope_reference", "rope_table", "silu_mul", "silu_mul_reference", "token_logprobs",
    "token_logprobs_reference", "write_kv_cache",
    "sample_plain", "sample_plain_reference",
]
