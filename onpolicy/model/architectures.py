"""What each supported HF checkpoint family changes in the one decoder (`transformer.py`), chosen by model_type.

An `Architecture` is a description, not code: biases, q/k norm, norm placement, layers without RoPE, the
activation, and the config.json fields the family must have (or must not set) to be computed exactly. A new
family is one entry in `ARCHITECTURES` plus one test row (tests/model/test_architectures.py).
Left out: sliding windows of Qwen2 / SmolLM3 (`use_sliding_window`; a window at least the context long is
accepted: it masks nothing), MoE MLPs other than Qwen3-MoE's, MLP biases, logit soft-capping (Gemma-2) -- a
config that needs one of them is refused at load, naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

QK_NORMS = ("none", "head", "full")
NORM_PLACEMENTS = ("pre", "post", "sandwich")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class Architecture:
    """One checkpoint family.

    qkv_bias / o_bias: None = the config's `attention_bias`; True/False = fixed by the family (Qwen2: q/k/v
    biases, none on o_proj). qk_norm: "head" = RMSNorm over each head (Qwen3), "full" = over all heads' width
    (OLMo-2), applied before RoPE. norm_placement: "pre" = norm in front of attention and MLP (Llama), "post" =
    norm on their outputs before the residual add (OLMo-2), "sandwich" = both (Gemma-3). norm_offset: norms
    scale by (1 + w) in fp32 (Gemma). embed_scale: embeddings times sqrt(hidden_size) (Gemma). windows: the
    config's `layer_types` / `sliding_window` give sliding-window layers with their own rope theta (Gemma-3;
    needs the attention kernels' window). uniform_window: the config's `sliding_window`, when shorter than the
    context, applies to every layer (Mistral, Phi-3). act_field: the config.json key of the activation. rope_per_layer:
    the config's `no_rope_layers` (1 = RoPE, 0 = none) picks layers without RoPE (SmolLM3). fused_checkpoint:
    the checkpoint stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`, in our fused layout
    (Phi-3). must_be: config.json fields whose value other than the given one cannot be computed exactly;
    hf_absent: the value transformers assumes for such a field when config.json omits it (else: the allowed
    one). hf_defaults: family fields written on save. moe: the config's `num_experts` / `num_experts_per_tok` /
    `moe_intermediate_size` / `norm_topk_prob` / `decoder_sparse_step` / `mlp_only_layers` give sparse MoE MLP
    layers (Qwen3-MoE; `model/moe.py`).
    """

    model_type: str
    hf_class: str
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    qk_norm: str = "none"
    norm_placement: str = "pre"
    rope_per_layer: bool = False
    fused_checkpoint: bool = False
    norm_offset: bool = False
    embed_scale: bool = False
    windows: bool = False
    uniform_window: bool = False
    act_field: str = "hidden_act"
    moe: bool = False
    must_be: dict = field(default_factory=dict)
    hf_absent: dict = field(default_factory=dict)
    hf_defaults: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"Architecture.qk_norm: got {self.qk_norm!r}; allowed: {', '.join(QK_NORMS)}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"Architecture.norm_placement: got {self.norm_placement!r}; allowed: "
                             f"{', '.join(NORM_PLACEMENTS)}")


# Every family: no MLP biases, no sliding windows (`sliding_window` may still hold a size: Qwen2 configs do).
_ALWAYS = {"mlp_bias": False, "use_sliding_window": False}

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("qwen3", "Qwen3ForCausalLM", qk_norm="head"),
    Architecture("llama", "LlamaForCausalLM"),
    Architecture("qwen2", "Qwen2ForCausalLM", qkv_bias=True, o_bias=False),
    Architecture("mistral", "MistralForCausalLM", uniform_window=True, hf_absent={"sliding_window": 4096}),
    Architecture("olmo2", "Olmo2ForCausalLM", qk_norm="full", norm_placement="post"),
    Architecture("smollm3", "SmolLM3ForCausalLM", rope_per_layer=True),
    Architecture("phi3", "Phi3ForCausalLM", fused_checkpoint=True, uniform_window=True),
    Architecture("gemma3_text", "Gemma3ForCausalLM", qk_norm="head", norm_placement="sandwich", norm_offset=True,
                 embed_scale=True, windows=True, act_field="hidden_activation",
                 must_be={"final_logit_softcapping": None, "attn_logit_softcapping": None,
                          "use_bidirectional_attention": False}),
    Architecture("qwen3_moe", "Qwen3MoeForCausalLM", qk_norm="head", moe=True),
)}
_BY_CLASS = {a.hf_class: a for a in ARCHITECTURES.values()}


def architecture(model_type: str) -> Architecture:
    """The registry entry for `model_type`; ValueError listing the supported ones."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"ModelConfig.architecture: got {model_type!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def from_hf_names(hf: dict) -> Architecture:
    """The entry for a config.json: its model_type, else the first of its `architectures` classes we know."""
    if hf.get("model_type") in ARCHITECTURES:
        return ARCHITECTURES[hf["model_type"]]
    for name in hf.get("architectures") or []:
        if name in _BY_CLASS:
            return _BY_CLASS[name]
    raise ValueError(f"config.json: model_type {hf.get('model_type')!r} / architectures {hf.get('architectures')!r} "
                     f"not supported; allowed model_type: {', '.join(ARCHITECTURES)}")


def check_hf_fields(arch: Architecture, hf: dict) -> None:
    """Refuse a config.json that sets a field this family's entry cannot compute (one-line ValueError)."""
    for name, allowed in dict(_ALWAYS, **arch.must_be).items():
        value = hf.get(name, arch.hf_absent.get(name, allowed))
        if name == "sliding_window" and isinstance(value, int) and value >= hf.get("max_position_embeddings", 0):
            continue  # a window covering the whole context masks nothing: full attention, exactly
        if value != allowed and not (allowed is False and value is None):
            reason = "sliding-window attention is not supported" if "sliding" in name else "not supported"
            raise ValueError(f"config.json: {name} {value!r} is {reason} for {arch.model_type}; allowed: "
                             f"{allowed!r}")
    layer_types = hf.get("layer_types") or []
    if not arch.windows and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"config.json: layer_types {sorted(set(layer_types))} not supported (sliding-window "
                         "attention); allowed: full_attention only")


def attention_has_window() -> bool:
    """Whether the attention kernels take a sliding `window` (the argument every path must honour)."""
    import inspect

    from onpolicy import kernels

    return all("window" in inspect.signature(f).parameters for f in (kernels.attention, kernels.attention_varlen))


def window_fields(arch: Architecture, hf: dict) -> dict:
    """Sliding-window fields from config.json. Gemma-3's -> ModelConfig kwargs (sliding_window, layer_types,
    rope_local_theta, query_pre_attn_scalar) plus "hf": the config with the full-attention layers' rope as its
    one rope setting (for `parse_hf_rope`); Mistral / Phi-3: one window on every layer; other families:
    {"hf": hf}. Defaults are transformers' config classes'."""
    if arch.uniform_window:
        window = hf.get("sliding_window", arch.hf_absent.get("sliding_window"))
        if window is None or window >= hf.get("max_position_embeddings", 2048):  # masks nothing: full attention
            return {"hf": hf}
        return {"hf": hf, "sliding_window": window, "layer_types": ("sliding_attention",) * hf["num_hidden_layers"]}
    if not arch.windows:
        return {"hf": hf}
    params = hf.get("rope_parameters") or {}
    local = params.get("sliding_attention") or {}
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"config.json: rope_parameters.sliding_attention rope_type {local['rope_type']!r} not "
                         "supported; allowed: default")
    full = dict(params.get("full_attention") or {}) if "full_attention" in params else dict(params)
    if "rope_theta" not in full:
        full["rope_theta"] = hf.get("rope_theta", 1e6)
    n = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern", 6)
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    return {
        "hf": dict(hf, rope_parameters=full),
        "sliding_window": hf.get("sliding_window", 4096),
        "layer_types": tuple(layer_types),
        "rope_local_theta": float(local.get("rope_theta", hf.get("rope_local_base_freq", 1e4))),
        "query_pre_attn_scalar": hf.get("query_pre_attn_scalar", 256),
    }
