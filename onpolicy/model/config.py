"""ModelConfig: the decoder's hyper-parameters, validated, with HF config.json conversion for every family in
`architectures.ARCHITECTURES` (Qwen3, Qwen3-MoE, Llama, Qwen2, Mistral, OLMo-2, SmolLM3, Phi-3, Gemma-3 text).

Left out: sliding windows of Qwen2 / SmolLM3 (Gemma-3, Mistral, Phi-3 need the kernels' window), MLP bias, activations other
than SiLU / GELU-tanh, rope types other than `rope_scaling.ROPE_TYPES` (longrope: its short-factor context only),
head dims the attention kernels do not compile (`kernels.attention.HEAD_DIMS`) -- `from_hf` raises a ValueError
naming the field rather than loading a model that would compute something else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from onpolicy.kernels.attention import HEAD_DIMS
from onpolicy.model.architectures import (ACTIVATIONS, ARCHITECTURES, Architecture, architecture, attention_has_window,
                                          check_hf_fields, from_hf_names, window_fields)
from onpolicy.model.rope_scaling import check_scaling, parse_hf_rope

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fail(field: str, msg: str) -> None:
    raise ValueError(f"ModelConfig.{field}: {msg}")


@dataclass
class ModelConfig:
    """Decoder-only transformer config; `architecture` names its `Architecture` (what the family changes).

    rope_scaling: None (default RoPE) or the HF rope parameters of a scaled type (`rope_type` first, without
    rope_theta). no_rope_layers: SmolLM3's per-layer 1 (RoPE) / 0 (no RoPE); None = RoPE in every layer.
    partial_rotary_factor: the fraction of each head RoPE rotates (Phi-4-mini 0.75; the loader reorders q/k head
    dims so rotated pairs sit at (i, i + head_dim / 2)). Gemma-3: layer_types (full_attention /
    sliding_attention), sliding_window, rope_local_theta (sliding layers' RoPE), query_pre_attn_scalar
    (attention scale its ** -0.5; None: head_dim ** -0.5). MoE (Qwen3-MoE; 0 experts = dense): num_experts,
    num_experts_per_tok (top-k), moe_intermediate_size (each expert's), norm_topk_prob (renormalise the top-k
    weights), decoder_sparse_step / mlp_only_layers (which layers are sparse: `layer_is_moe`).
    """

    architecture: str = "qwen3"
    vocab_size: int = 128
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    dtype: str = "float32"
    rope_scaling: dict | None = None
    no_rope_layers: tuple[int, ...] | None = None
    partial_rotary_factor: float = 1.0
    hidden_act: str = "silu"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: int | float | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("no_rope_layers", "layer_types", "mlp_only_layers"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def arch(self) -> Architecture:
        return architecture(self.architecture)

    @property
    def qk_norm(self) -> bool:
        return self.arch.qk_norm != "none"

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias if self.arch.qkv_bias is None else self.arch.qkv_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias if self.arch.o_bias is None else self.arch.o_bias

    def layer_is_moe(self, layer: int) -> bool:
        """Whether layer `layer` has the sparse MoE MLP (transformers' rule for Qwen3-MoE)."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def layer_uses_rope(self, layer: int) -> bool:
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])

    def _sliding(self, layer: int) -> bool:
        return self.layer_types is not None and self.layer_types[layer] == "sliding_attention"

    def layer_window(self, layer: int) -> int | None:
        """The layer's sliding window (keys per query, itself included) or None (full causal)."""
        return self.sliding_window if self._sliding(layer) else None

    def layer_rope_slot(self, layer: int) -> int:
        """Index of the layer's rope table: 1 = the local theta of Gemma's sliding layers, else 0."""
        return 1 if self._sliding(layer) and self.rope_local_theta is not None else 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            _fail("architecture", f"got {self.architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
        if self.dtype not in DTYPES:
            _fail("dtype", f"got {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, f"must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            _fail("num_key_value_heads", f"must divide num_attention_heads ({self.num_attention_heads}), "
                  f"got {self.num_key_value_heads}")
        if self.head_dim % 2:
            _fail("head_dim", f"must be even (RoPE rotates halves), got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            _fail("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            _fail("rope_theta", f"must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            check_scaling(self.rope_scaling)
        self._validate_family_fields()
        self._validate_moe()
        if self.partial_rotary_factor != 1.0 and self.arch.qk_norm == "head":
            _fail("partial_rotary_factor", f"{self.partial_rotary_factor!r} with per-head q/k norm is not supported; "
                  "allowed: 1.0")
        rotary = int(self.head_dim * self.partial_rotary_factor)
        if not 0 < self.partial_rotary_factor <= 1 or rotary % 2:
            _fail("partial_rotary_factor", f"must be in (0, 1] with an even head_dim * factor, got "
                  f"{self.partial_rotary_factor!r} (head_dim {self.head_dim})")
        if self.no_rope_layers is not None and (not self.arch.rope_per_layer or len(self.no_rope_layers)
                                                != self.num_hidden_layers or set(self.no_rope_layers) - {0, 1}):
            families = ", ".join(a for a, e in ARCHITECTURES.items() if e.rope_per_layer)
            _fail("no_rope_layers", f"must be None or (for {families}) {self.num_hidden_layers} values of 0/1, "
                  f"got {self.no_rope_layers!r}")

    def _validate_family_fields(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            _fail("hidden_act", f"got {self.hidden_act!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.layer_types is not None:
            kinds = ("full_attention", "sliding_attention")
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(kinds):
                _fail("layer_types", f"must be {self.num_hidden_layers} of {', '.join(kinds)}, "
                      f"got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and not (self.arch.windows or self.arch.uniform_window):
                _fail("layer_types", f"sliding_attention layers are not supported for {self.architecture}")
        if self.sliding_window is not None and not (isinstance(self.sliding_window, int) and self.sliding_window > 0):
            _fail("sliding_window", f"must be None or a positive int, got {self.sliding_window!r}")
        if self.layer_types and "sliding_attention" in self.layer_types:
            if self.sliding_window is None:
                _fail("sliding_window", "sliding_attention layers need a sliding_window")
            if not attention_has_window():
                _fail("sliding_window", f"{self.sliding_window} needs the attention kernels' window argument, which "
                      "this build lacks; allowed: a window >= max_position_embeddings")

    def _validate_moe(self) -> None:
        if not self.arch.moe:
            if self.num_experts:
                _fail("num_experts", f"must be 0 for {self.architecture} (dense), got {self.num_experts!r}")
            return
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, f"must be a positive int for {self.architecture}, got {value!r}")
        if self.num_experts_per_tok > self.num_experts:
            _fail("num_experts_per_tok", f"must be <= num_experts ({self.num_experts}), got {self.num_experts_per_tok}")
        if any(not isinstance(i, int) or not 0 <= i < self.num_hidden_layers for i in self.mlp_only_layers):
            _fail("mlp_only_layers",
                  f"must be layer indices in [0, {self.num_hidden_layers}), got {self.mlp_only_layers!r}")

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with `overrides` applied; unknown names raise ValueError listing the fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; allowed: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_hf(cls, hf: dict, dtype: str | None = None) -> "ModelConfig":
        """Build from a HF config.json dict (a family of `ARCHITECTURES`). `dtype` overrides the checkpoint's."""
        arch = from_hf_names(hf)
        check_hf_fields(arch, hf)
        act = hf.get(arch.act_field) or hf.get("hidden_act") or "silu"
        if act not in ACTIVATIONS:
            raise ValueError(f"config.json: {arch.act_field} {act!r} not supported; allowed: {', '.join(ACTIVATIONS)}")
        partial = hf.get("partial_rotary_factor", (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0))
        windows = window_fields(arch, hf)  # Gemma-3: layer types, window, local rope theta, attention scalar
        theta, scaling, context_cap = parse_hf_rope(windows.pop("hf"))
        max_positions = hf.get("max_position_embeddings", 2048)
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"config.json: head_dim {head_dim} not supported by the attention kernels; allowed: "
                             f"{', '.join(map(str, HEAD_DIMS))}")
        if dtype is None:
            saved = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
            dtype = saved if saved in DTYPES else "float32"
        return cls(
            architecture=arch.model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            max_position_embeddings=min(max_positions, context_cap or max_positions),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)) if arch.qkv_bias is None else False,
            dtype=dtype,
            rope_scaling=scaling,
            no_rope_layers=_no_rope_layers(arch, hf),
            partial_rotary_factor=float(partial),
            hidden_act=act,
            **windows,
            **_moe_fields(arch, hf),
        )

    def to_hf(self) -> dict:
        """The HF config.json dict (`transformers.AutoConfig` reads it; rope given both old and new style)."""
        rope = dict(self.rope_scaling or {"rope_type": "default"}, rope_theta=self.rope_theta)
        if self.partial_rotary_factor != 1.0:
            rope["partial_rotary_factor"] = self.partial_rotary_factor
        out = {
            "architectures": [self.arch.hf_class],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            self.arch.act_field: self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "rope_scaling": None if self.rope_scaling is None else dict(self.rope_scaling),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "dtype": self.dtype,
            "torch_dtype": self.dtype,
            **self.arch.hf_defaults,
        }
        if self.arch.qkv_bias is None:
            out["attention_bias"] = self.attention_bias
        if self.arch.moe:
            out.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                       moe_intermediate_size=self.moe_intermediate_size, norm_topk_prob=self.norm_topk_prob,
                       decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=list(self.mlp_only_layers),
                       use_sliding_window=False, sliding_window=None)
        if self.no_rope_layers is not None:
            out["no_rope_layers"] = list(self.no_rope_layers)
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        if self.arch.uniform_window:
            out["sliding_window"] = self.sliding_window
        if self.arch.windows:
            out.update(layer_types=list(self.layer_types or ["full_attention"] * self.num_hidden_layers),
                       sliding_window=self.sliding_window, query_pre_attn_scalar=self.query_pre_attn_scalar,
                       rope_local_base_freq=self.rope_local_theta, rope_scaling=None,
                       rope_parameters={"full_attention": rope, "sliding_attention": {
                           "rope_type": "default", "rope_theta": self.rope_local_theta}})
        return out


def _no_rope_layers(arch: Architecture, hf: dict) -> tuple[int, ...] | None:
    """SmolLM3's per-layer RoPE switch: config.json's `no_rope_layers`, else HF's rule from
    `no_rope_layer_interval` (every interval-th layer has no RoPE); None for the other families."""
    if not arch.rope_per_layer:
        return None
    layers = hf.get("no_rope_layers")
    if layers is None:
        interval = hf.get("no_rope_layer_interval", 4)
        layers = [int((i + 1) % interval != 0) for i in range(hf["num_hidden_layers"])]
    return tuple(int(x) for x in layers)


def _moe_fields(arch: Architecture, hf: dict) -> dict:
    """Qwen3-MoE's sparse-MLP fields from config.json (defaults: transformers' Qwen3MoeConfig); {} if dense."""
    if not arch.moe:
        return {}
    experts = hf.get("num_experts", hf.get("num_local_experts", 128))
    return {"num_experts": experts, "num_experts_per_tok": hf.get("num_experts_per_tok", 8),
            "moe_intermediate_size": hf.get("moe_intermediate_size", 768),
            "norm_topk_prob": bool(hf.get("norm_topk_prob", False)),
            "decoder_sparse_step": hf.get("decoder_sparse_step", 1),
            "mlp_only_layers": tuple(hf.get("mlp_only_layers") or ())}
