"""RoPE settings from config.json and the model's fp32 rope table, for every rope type computed exactly.

`parse_hf_rope(hf)` reads `rope_parameters` (as transformers 5 writes config.json) or `rope_theta` +
`rope_scaling` (as checkpoints are published) into (rope_theta, scaling dict or None). `build_rope_table(cfg,
device)` makes the [max_position_embeddings, head_dim] cos|sin table: the default type with
`kernels.rope_cache`; `linear`, `llama3` and `yarn` with the inverse frequencies and attention factor of
transformers' own `ROPE_INIT_FUNCTIONS`, so they match HF exactly. The table is indexed by position only, so
a token's rotation never depends on its batch.
Left out (refused at load, naming the field): `dynamic` and `longrope`, whose frequencies HF recomputes from the
longest position in the batch (a token's rotation would depend on what it is batched with); other rope types.
"""
from __future__ import annotations

import torch

from onpolicy import kernels

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_REQUIRED = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",)}
_BATCH_DEPENDENT = {
    "dynamic": "dynamic NTK rescales the frequencies from the longest sequence in the batch",
    "longrope": "longrope picks its short or long factors from the longest position in the batch",
}


def parse_hf_rope(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling) from a config.json dict; scaling is None for the default type, else the HF rope
    parameters without rope_theta (`rope_type` first). Unsupported types raise ValueError naming the field."""
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
        return theta, None
    return theta, check_scaling(dict(rope_type=rope_type, **rope))


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
        self.rope_parameters = dict(cfg.rope_scaling, rope_theta=cfg.rope_theta)
        self.head_dim = cfg.head_dim
        self.hidden_size = cfg.hidden_size
        self.num_attention_heads = cfg.num_attention_heads
        self.max_position_embeddings = cfg.max_position_embeddings

    def standardize_rope_params(self) -> None:  # already standard
        return None


def rope_frequencies(cfg) -> tuple[torch.Tensor, float]:
    """(fp32 inv_freq on the CPU, attention factor) for a scaled config, from transformers' ROPE_INIT_FUNCTIONS."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, factor = ROPE_INIT_FUNCTIONS[cfg.rope_scaling["rope_type"]](_HFRopeView(cfg), torch.device("cpu"))
    return inv_freq.to(torch.float32), float(factor)


def build_rope_table(cfg, device) -> torch.Tensor:
    """fp32 [max_position_embeddings, head_dim] cos|sin table of `cfg` (a ModelConfig) on `device`."""
    if cfg.rope_scaling is None:
        return kernels.rope_cache(cfg.max_position_embeddings, cfg.head_dim, cfg.rope_theta, device)
    inv_freq, factor = rope_frequencies(cfg)
    return kernels.rope_table(inv_freq.to(device), cfg.max_position_embeddings, cfg.head_dim, factor)
