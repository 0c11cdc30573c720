"""ModelConfig: the decoder's hyper-parameters, validated, with HF config.json conversion for every family in
`architectures.ARCHITECTURES` (Qwen3, Llama, Qwen2, Mistral, OLMo-2, SmolLM3).

Left out: sliding-window attention, MLP bias, activations other than SiLU, rope types other than
`rope_scaling.ROPE_TYPES` (longrope: its short-factor context only), head dims the attention kernels do not compile (`kernels.attention.HEAD_DIMS`) --
`from_hf` raises a ValueError naming the field rather than loading a model that would compute something else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from onpolicy.kernels.attention import HEAD_DIMS
from onpolicy.model.architectures import ARCHITECTURES, Architecture, architecture, check_hf_fields, from_hf_names
from onpolicy.model.rope_scaling import check_scaling, parse_hf_rope

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fail(field: str, msg: str) -> None:
    raise ValueError(f"ModelConfig.{field}: {msg}")


@dataclass
class ModelConfig:
    """Decoder-only transformer config; `architecture` names its `Architecture` (what the family changes).

    rope_scaling: None (default RoPE) or the HF rope parameters of a scaled type (`rope_type` first, without
    rope_theta). no_rope_layers: SmolLM3's per-layer 1 (RoPE) / 0 (no RoPE); None = RoPE in every layer.
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

    def __post_init__(self) -> None:
        if self.no_rope_layers is not None:
            self.no_rope_layers = tuple(self.no_rope_layers)
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

    def layer_uses_rope(self, layer: int) -> bool:
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])

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
        if self.partial_rotary_factor != 1.0 and self.arch.qk_norm == "head":
            _fail("partial_rotary_factor", f"{self.partial_rotary_factor!r} with per-head q/k norm is not supported; "
                  "allowed: 1.0")
        rotary = int(self.head_dim * self.partial_rotary_factor)
        if not 0 < self.partial_rotary_factor <= 1 or rotary % 2:
            _fail("partial_rotary_factor", f"must be in (0, 1] with an even head_dim * factor, got "
                  f"{self.partial_rotary_factor!r} (head_dim {self.head_dim})")
        if self.no_rope_layers is not None and (not self.arch.rope_per_layer or len(self.no_rope_layers)
                                                != self.num_hidden_layers or set(self.no_rope_layers) - {0, 1}):
            _fail("no_rope_layers", f"must be None or (for {', '.join(a for a, e in ARCHITECTURES.items() if e.rope_per_layer)}) "
                  f"{self.num_hidden_layers} values of 0/1, got {self.no_rope_layers!r}")

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
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: hidden_act {act!r} not supported; allowed: silu")
        partial = hf.get("partial_rotary_factor", (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0))
        theta, scaling, context_cap = parse_hf_rope(hf)
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
            "hidden_act": "silu",
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
        if self.no_rope_layers is not None:
            out["no_rope_layers"] = list(self.no_rope_layers)
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
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
