"""ModelConfig: the Qwen3 / Llama decoder hyper-parameters, validated, with HF config.json conversion.

Left out: rope scaling (Llama-3 "llama3", YaRN, ...), sliding-window attention, MLP bias, and any activation
other than SiLU -- `from_hf` raises a ValueError for a config that needs one of them rather than loading a
model that would compute something else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

ARCHITECTURES = ("qwen3", "llama")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_HF_CLASS = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
_HF_ARCH = {v: k for k, v in _HF_CLASS.items()}


def _fail(field: str, msg: str) -> None:
    raise ValueError(f"ModelConfig.{field}: {msg}")


@dataclass
class ModelConfig:
    """Decoder-only transformer config. `qk_norm` (per-head RMSNorm on q and k before RoPE) is Qwen3's."""

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

    def __post_init__(self) -> None:
        self.validate()

    @property
    def qk_norm(self) -> bool:
        return self.architecture == "qwen3"

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

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with `overrides` applied; unknown names raise ValueError listing the fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; allowed: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_hf(cls, hf: dict, dtype: str | None = None) -> "ModelConfig":
        """Build from a HF config.json dict (model_type qwen3 / llama). `dtype` overrides the checkpoint's."""
        arch = hf.get("model_type")
        if arch not in ARCHITECTURES:
            classes = hf.get("architectures") or []
            arch = next((_HF_ARCH[c] for c in classes if c in _HF_ARCH), None)
        if arch is None:
            raise ValueError(f"config.json: model_type {hf.get('model_type')!r} / architectures "
                             f"{hf.get('architectures')!r} not supported; allowed model_type: qwen3, llama")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: hidden_act {act!r} not supported; allowed: silu")
        if hf.get("mlp_bias"):
            raise ValueError("config.json: mlp_bias true is not supported; allowed: false")
        if hf.get("use_sliding_window"):
            raise ValueError("config.json: use_sliding_window true is not supported; allowed: false")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"config.json: rope type {rope_type!r} not supported; allowed: default")
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = hf["num_attention_heads"]
        if dtype is None:
            saved = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
            dtype = saved if saved in DTYPES else "float32"
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            dtype=dtype,
        )

    def to_hf(self) -> dict:
        """The HF config.json dict (`transformers.AutoConfig` reads it; rope given both old and new style)."""
        return {
            "architectures": [_HF_CLASS[self.architecture]],
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
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "dtype": self.dtype,
            "torch_dtype": self.dtype,
        }
