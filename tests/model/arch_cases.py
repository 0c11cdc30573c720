"""One row per supported checkpoint family: the real model's config.json values (rope, bias, tie, norm, head_dim
settings as published), shrunk to a tiny CPU shape, and its real layer shape for GPU tests.

`REAL[name]` holds the published values that matter for the maths; `tiny_hf_config(name)` builds a transformers
config from them with 2 layers, a small hidden size and vocab, and a short `original_max_position_embeddings`
where rope scaling has one, so the scaling changes frequencies at the positions the tests reach (300+).
"""
from __future__ import annotations

import copy

import torch

VOCAB = 128  # >= CharTokenizer's size, so the engine can run the model with it

REAL = {
    # Qwen/Qwen2.5-0.5B-Instruct (Qwen2.5-Math, DeepSeek-R1-Distill-Qwen share the class)
    "qwen2": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                  use_sliding_window=False, sliding_window=32768, max_window_layers=21, hidden_act="silu"),
    # Qwen/Qwen2.5-7B-Instruct with the model card's long-context YaRN setting
    "qwen2-yarn": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                       tie_word_embeddings=False, use_sliding_window=False, sliding_window=131072,
                       rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    # meta-llama/Llama-3.2-1B-Instruct
    "llama3": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=True,
                   attention_bias=False, mlp_bias=False,
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                                 "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
    # lmsys/vicuna-7b-v1.5-16k (Llama-2 with linear rope scaling)
    "llama-linear": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                         num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-5, rope_theta=1e4,
                         tie_word_embeddings=False, rope_scaling={"type": "linear", "factor": 4.0}),
    # mistralai/Mistral-7B-v0.3
    "mistral": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False,
                    sliding_window=None),
    # allenai/OLMo-2-0425-1B
    "olmo2": dict(model_type="olmo2", hidden_size=2048, intermediate_size=8192, num_attention_heads=16,
                  num_key_value_heads=16, head_dim=128, rms_norm_eps=1e-6, rope_theta=5e5, tie_word_embeddings=False,
                  attention_bias=False),
    # HuggingFaceTB/SmolLM3-3B (no_rope_layers: every 4th layer without RoPE; here 4 layers so one has none)
    "smollm3": dict(model_type="smollm3", hidden_size=2048, intermediate_size=11008, num_attention_heads=16,
                    num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=5e6, tie_word_embeddings=True,
                    use_sliding_window=False, sliding_window=None, no_rope_layer_interval=4),
    # microsoft/phi-4 (Phi3ForCausalLM: fused qkv_proj / gate_up_proj; no rope scaling, full rotary)
    "phi3": dict(model_type="phi3", hidden_size=5120, intermediate_size=17920, num_attention_heads=40,
                 num_key_value_heads=10, head_dim=128, rms_norm_eps=1e-5, rope_theta=2.5e5, tie_word_embeddings=False,
                 original_max_position_embeddings=16384, sliding_window=None),
    # mistralai/Mistral-7B-v0.1 (a 4,096-key sliding window on every layer)
    "mistral-window": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1e4,
                           tie_word_embeddings=False, sliding_window=4096),
    # microsoft/Phi-3-mini-4k-instruct (head_dim 96, a 2,047-key sliding window on every layer)
    "phi3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                      num_key_value_heads=32, head_dim=96, rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False,
                      original_max_position_embeddings=4096, sliding_window=2047),
    # microsoft/Phi-4-mini-instruct (partial rotary 0.75, longrope: loaded at its short-factor context)
    "phi4-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=True,
                      partial_rotary_factor=0.75, original_max_position_embeddings=4096, sliding_window=262144,
                      rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.02 * i for i in range(48)],
                                    "long_factor": [1.0 + 0.5 * i for i in range(48)]}),
    # google/gemma-3-1b-it (Gemma3ForCausalLM): (1+w) norms, GeGLU, embedding scale, sliding / full layers
    "gemma3": dict(model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, rope_theta=1e6, rope_local_base_freq=1e4,
                   query_pre_attn_scalar=256, sliding_window=512, sliding_window_pattern=6, tie_word_embeddings=True,
                   hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None, attn_logit_softcapping=None),
    # Qwen/Qwen3-30B-A3B (Qwen3MoeForCausalLM): 128 experts, top-8, renormalised top-k weights, every layer sparse
    "qwen3-moe": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                      num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                      tie_word_embeddings=False, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False, sliding_window=None,
                      attention_bias=False, hidden_act="silu"),
    # the same layer shape with raw top-k weights (norm_topk_prob false) and a dense first layer (mlp_only_layers)
    "qwen3-moe-mixed": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144,
                            moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                            rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, num_experts=128,
                            num_experts_per_tok=8, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[0],
                            use_sliding_window=False, sliding_window=None, attention_bias=False, hidden_act="silu"),
}
NEEDS_WINDOWS = ("gemma3", "mistral-window", "phi3-mini")  # sliding windows (and head_dim 96 / 256) in the kernels
# Tiny-shape changes beyond layers/hidden/vocab: longrope is exact up to original_max_position_embeddings, so the
# tiny Phi-4-mini keeps 512 of them (past the tests' 300+ positions) under a published context 16x longer.
# Gemma-3's two tiny layers are one sliding and one full; tiny windows are 64 keys, so they mask at the tests' positions.
TINY_EXTRA = {"phi4-mini": dict(original_max_position_embeddings=512, max_position_embeddings=8192),
              "gemma3": dict(sliding_window=64, layer_types=["sliding_attention", "full_attention"]),
              "mistral-window": dict(sliding_window=64), "phi3-mini": dict(sliding_window=64),
              # MoE: 16 experts of 32 rows (top-8 as published), so a CPU forward stays small
              "qwen3-moe": dict(num_experts=16, moe_intermediate_size=32),
              "qwen3-moe-mixed": dict(num_experts=16, moe_intermediate_size=32)}
MUST = ("qwen2", "qwen2-yarn", "llama3", "llama-linear", "mistral")
TINY_LAYERS = {"smollm3": 4}


def _shrunk(name: str, layers: int, heads: int, max_pos: int) -> dict:
    real = copy.deepcopy(REAL[name])  # transformers' config classes edit rope dicts in place
    ratio = real["num_attention_heads"] // real["num_key_value_heads"]
    kv = max(1, heads // ratio)
    real.update(num_hidden_layers=layers, num_attention_heads=kv * min(ratio, heads), num_key_value_heads=kv,
                vocab_size=VOCAB, max_position_embeddings=max_pos, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    if "original_max_position_embeddings" in (real.get("rope_scaling") or {}):
        real["rope_scaling"] = dict(real["rope_scaling"], original_max_position_embeddings=64)
    return real


def tiny_hf_config(name: str, attn: str = "eager"):
    """A transformers config of family `name`: real maths settings, 2 layers (SmolLM3: 4), hidden 128."""
    from transformers import AutoConfig

    values = _shrunk(name, TINY_LAYERS.get(name, 2), heads=4, max_pos=512)
    phi = values["model_type"] == "phi3"  # Phi-3 derives head_dim from hidden_size / heads
    values.update(hidden_size=values["num_attention_heads"] * values["head_dim"] if phi else 128,
                  intermediate_size=96, **TINY_EXTRA.get(name, {}))
    cfg = AutoConfig.for_model(values.pop("model_type"), **values)
    cfg._attn_implementation = attn
    return cfg


def skip_reason(name: str) -> str | None:
    """Why family `name` cannot run on this build's attention kernels (None: it can)."""
    from onpolicy.kernels.attention import HEAD_DIMS
    from onpolicy.model.architectures import attention_has_window

    if name in NEEDS_WINDOWS and not (attention_has_window() and REAL[name]["head_dim"] in HEAD_DIMS):
        return (f"{name} needs head_dim {REAL[name]['head_dim']} and the sliding `window` argument in the attention "
                f"kernels (this build: head dims {HEAD_DIMS}, window {attention_has_window()})")
    return None


def real_shape_hf_config(name: str, layers: int = 4):
    """A transformers config of family `name` with the real layer shape (hidden, heads, head_dim,
    intermediate), `layers` layers and a small vocab (GPU tests)."""
    from transformers import AutoConfig

    values = _shrunk(name, layers, heads=REAL[name]["num_attention_heads"], max_pos=4096)
    if name == "gemma3":  # both layer kinds in the first layers
        values["layer_types"] = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (
            layers % 2)
    elif name in NEEDS_WINDOWS:  # one window on every layer, short enough to mask at the tests' 1,100 positions
        values["sliding_window"] = 512
    return AutoConfig.for_model(values.pop("model_type"), **values)


def random_model(name: str, seed: int = 0):
    """A transformers model of family `name` (fp32, eager attention) with norms and biases perturbed off
    their init values, so a swapped or dropped one shows in the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(name), attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def mixed_workload_pairs(model):
    """(engine logprobs, trainer logprobs) per completion of one mixed engine workload on `model`'s device:
    ragged prompts past position 1,000 (chunked prefill beside decode), n=2 samples sharing prompt blocks, two
    temperatures; the trainer's are `sequence_logprobs` of the packed sequences, moved to the engine's device.
    Returns (pairs, (prompts, completions)) -- the latter for further checks (e.g. MoE routing)."""
    from onpolicy.engine import LLM, EngineConfig, SamplingParams
    from onpolicy.model import sequence_logprobs
    from onpolicy.model.tiny import CharTokenizer

    llm = LLM(model, CharTokenizer(), EngineConfig(num_blocks=1024, block_size=16, max_num_batched_tokens=256,
                                                   max_num_seqs=16))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 80, (n,), generator=g).tolist() for n in (1100, 700, 3, 64, 250, 17, 1, 129)]
    params = [SamplingParams(n=2, temperature=[1.0, 0.7][i % 2], max_tokens=8 + 5 * i, seed=i) for i in range(8)]
    groups, pairs, seqs = {}, [], ([], [])
    for out, p in zip(llm.generate(prompts, params), params):
        for c in out.outputs:
            for part, item in zip(groups.setdefault(p.temperature, ([], [], [])),
                                  (out.prompt_token_ids, c.token_ids, c.logprobs)):
                part.append(item)
    for t, (ps, cs, engine) in groups.items():
        with torch.no_grad():
            trainer = sequence_logprobs(model, ps, cs, t)
        pairs += [(a, b.to(a.device)) for a, b in zip(engine, trainer)]
        seqs[0].extend(ps)
        seqs[1].extend(cs)
    return pairs, seqs
