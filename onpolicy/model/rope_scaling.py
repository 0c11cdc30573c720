"""RoPE settings from config.json and the model's fp32 rope table, for every rope type computed exactly.

`parse_hf_rope(hf)` reads `rope_parameters` (as transformers 5 writes config.json) or `rope_theta` +
`rope_scaling` (as checkpoints are published) into (rope_theta, scaling dict or None, context cap or None).
`build_rope_table(cfg, device)` makes the [max_position_embeddings, head_dim] cos|sin table: the default type
with `kernels.rope_cache`; `linear`, `llama3`, `yarn` and `longrope` with the inverse frequencies and attention
factor of transformers' own `ROPE_INIT_FUNCTIONS`, so they match HF exactly. Partial rotary: the frequencies
cover the first rotary dims, the rest pass unrotated. The table is indexed by position only, so a token's
rotation never depends on its batch.
longrope: HF switches from its short to its long factors for the whole batch once the batch's longest position
passes original_max_position_embeddings; below that it always uses the short ones. So a longrope model is
loaded with max_position_embeddings capped at original_max_position_embeddings (short factors, exact) and its
attention factor fixed from the published context (saved explicitly, so transformers reloads the same maths).
Left out (refused at load, naming the field): `dynamic` (HF rescales its frequencies from the longest sequence
in the batch, so a token's rotation would depend on its batch), longrope's long factors, other rope types.
"""
from __future__ import annotations

import math

import torch

from onpolicy import kernels

ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
_REQUIRED = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",),
             "longrope": ("short_factor", "long_factor", "original_max_position_embeddings", "attention_factor")}
_BATCH_DEPENDENT = {"dynamic": "dynamic NTK rescales the frequencies from the longest sequence in the batch"}


def parse_hf_rope(hf: dict) -> tuple[float, dict | None, int | None]:
    """(rope_theta, scaling, context cap) from a config.json dict; scaling is None for the default type, else
    the HF rope parameters without rope_theta (`rope_type` first); the cap is longrope's exact context (else
    None). Unsupported types raise ValueError naming the field."""
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in rope.values()):
        raise ValueError("config.json: rope_parameters per layer type (local/global layers) not supported; "
                         "allowed: one rope setting for all layers")
    legacy_type = rope.pop("type", "default")
    rope_type = rope.pop("rope_type", legacy_type)
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope.pop("partial_rotary_factor", None)  # read by ModelConfig from config.json itself
    if rope_type in _BATCH_DEPENDENT:
        raise ValueError(f"config.json: rope_scaling rope_type {rope_type!r} not supported: "
                         f"{_BATCH_DEPENDENT[rope_type]}, so a token's logprob would depend on its batch; "
                         f"allowed: {', '.join(ROPE_TYPES)}")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"config.json: rope_scaling rope_type {rope_type!r} not supported; allowed: "
                         f"{', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None, None
    cap = None
    if rope_type == "longrope":
        rope, cap = _longrope_short(rope, hf)
    return theta, check_scaling(dict(rope_type=rope_type, **rope)), cap


def _longrope_short(rope: dict, hf: dict) -> tuple[dict, int]:
    """longrope parameters for its short-factor regime: original_max_position_embeddings and the attention
    factor made explicit (HF's formula, from the published max_position_embeddings); -> (params, context cap)."""
    original = rope.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings")
    if not original:
        raise ValueError("config.json: rope_scaling longrope needs original_max_position_embeddings")
    factor = rope.get("factor") or hf.get("max_position_embeddings", original) / original
    if rope.get("attention_factor") is None:
        rope["attention_factor"] = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    rope.pop("factor", None)
    rope["original_max_position_embeddings"] = original
    return rope, original


def check_scaling(scaling: dict) -> dict:
    """`scaling` validated (known rope_type, its required keys present); ValueError naming the key."""
    rope_type = scaling.get("rope_type")
    if rope_type not in ROPE_TYPES[1:]:
        raise ValueError(f"ModelConfig.rope_scaling: rope_type {rope_type!r} not supported; allowed: "
                         f"{', '.join(ROPE_TYPES[1:])} (or rope_scaling None for the default)")
    missing = [k for k in _REQUIRED[rope_type] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"ModelConfig.rope_scaling: rope_type {rope_type!r} needs {', '.join(missing)}")
    return scaling


class _HFRopeView:
    """The attributes transformers' rope init functions read from a config, filled from a ModelConfig."""

    def __init__(self, cfg):
        self.rope_parameters = dict(cfg.rope_scaling or {"rope_type": "default"}, rope_theta=cfg.rope_theta,
                                    partial_rotary_factor=cfg.partial_rotary_factor)
        self.head_dim = cfg.head_dim
        self.hidden_size = cfg.hidden_size
        self.num_attention_heads = cfg.num_attention_heads
        self.max_position_embeddings = cfg.max_position_embeddings

    def standardize_rope_params(self) -> None:  # already standard
        return None


def rotary_dim(cfg) -> int:
    """Head dims that RoPE rotates (HF: int(head_dim * partial_rotary_factor))."""
    return int(cfg.head_dim * cfg.partial_rotary_factor)


def rope_frequencies(cfg) -> tuple[torch.Tensor, float]:
    """(fp32 inv_freq on the CPU, attention factor) for a scaled config, from transformers' ROPE_INIT_FUNCTIONS."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, factor = ROPE_INIT_FUNCTIONS[cfg.rope_scaling["rope_type"]](_HFRopeView(cfg), torch.device("cpu"))
    return inv_freq.to(torch.float32), float(factor)


def build_rope_table(cfg, device) -> torch.Tensor:
    """fp32 [max_position_embeddings, head_dim] cos|sin table of `cfg` (a ModelConfig) on `device`."""
    if cfg.rope_scaling is None and cfg.partial_rotary_factor == 1.0:
        return kernels.rope_cache(cfg.max_position_embeddings, cfg.head_dim, cfg.rope_theta, device)
    if cfg.rope_scaling is None:  # partial rotary: HF's default formula over the rotary dims
        dim = rotary_dim(cfg)
        exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float32) / dim
        inv_freq, factor = 1.0 / (cfg.rope_theta ** exponent), 1.0
    else:
        inv_freq, factor = rope_frequencies(cfg)
    return kernels.rope_table(inv_freq.to(device), cfg.max_position_embeddings, cfg.head_dim, factor)
