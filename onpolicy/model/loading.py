"""Load / save HF-format checkpoints (config.json + safetensors) for CausalLM, and the tokenizer.

Reads single-file and sharded (`model.safetensors.index.json`) checkpoints of every family in
`architectures.ARCHITECTURES`; MoE experts load from per-expert tensors or transformers 5's fused 3-D ones and
save per expert (as transformers' save_pretrained writes them). HF's separate q/k/v and gate/up projections are
copied into our fused parameters through each parameter's `weight_loader` (families whose checkpoint is fused,
Phi-3, load them whole). Writes one `model.safetensors` with the family's HF names so
`transformers.AutoModelForCausalLM.from_pretrained` loads it.
Partial rotary models get their q/k head dims reordered after loading and back before saving (rotary_layout).
Left out: `.bin` (pickle) checkpoints, hub downloads (pass a local directory), quantised weights, writing sharded
checkpoints.
"""
from __future__ import annotations

import json
import os

import torch

from onpolicy.model.config import DTYPES, ModelConfig
from onpolicy.model.moe import expert_hf_tensors, expert_key
from onpolicy.model.generation_config import read_generation_settings, write_generation_settings
from onpolicy.model.rotary_layout import qkv_row_index, to_our_order
from onpolicy.model.transformer import CausalLM

_FUSED = {  # HF projection name -> (our fused name, shard id)
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up"),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_to_ours(name: str) -> tuple[str, object]:
    """Map a HF parameter name to (our parameter name, shard id or None)."""
    expert = expert_key(name)
    if expert is not None:
        return expert
    for hf, (ours, shard) in _FUSED.items():
        token = f".{hf}."
        if token in name:
            return name.replace(token, f".{ours}."), shard
    return name, None


def _safetensor_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ValueError(f"load_pretrained: path {path!r} has neither model.safetensors nor "
                     "model.safetensors.index.json (only safetensors checkpoints are supported)")


def load_config(path: str, dtype: str | None = None) -> ModelConfig:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ValueError(f"load_pretrained: path {path!r} must be a local HF model directory with config.json")
    with open(cfg_file) as f:
        return ModelConfig.from_hf(json.load(f), dtype=dtype)


def load_pretrained(path: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
                    ) -> tuple[CausalLM, ModelConfig]:
    """Build CausalLM from a local HF directory. `dtype` ("float32" | "bfloat16" or the torch dtype; None =
    the checkpoint's dtype when supported, else float32) overrides the saved one."""
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"load_pretrained: dtype {dtype} not supported; allowed: {', '.join(DTYPES)}")
        dtype = names[dtype]
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"load_pretrained: dtype {dtype!r} not supported; allowed: {', '.join(DTYPES)}")

    config = load_config(path, dtype)
    model = CausalLM(config, init=False)
    load_weights(model, path)
    model.generation_settings = read_generation_settings(path)
    return model.to(device), config


def load_weights(model: CausalLM, path: str, keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Fill `model`'s parameters from the safetensors in `path`; returns the checkpoint tensors named in `keep`
    (e.g. a classification head the decoder has no parameter for). Any other unexpected key or missing
    parameter raises ValueError."""
    from safetensors import safe_open

    config = model.config
    params = dict(model.named_parameters())
    pending = {name: set(_shard_ids(model, name)) for name in params}
    unexpected, kept = [], {}
    for file in _safetensor_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                if key in keep:
                    kept[key] = f.get_tensor(key)
                    continue
                if key.endswith(_IGNORED_SUFFIXES) or (key == "lm_head.weight" and config.tie_word_embeddings):
                    continue
                name, shard = (key, None) if config.arch.fused_checkpoint else hf_to_ours(key)
                if name not in params:
                    unexpected.append(key)
                    continue
                param = params[name]
                param.weight_loader(param, f.get_tensor(key).to(param.dtype), shard)
                if shard is None:  # a whole tensor (fused in the checkpoint too): every shard is loaded
                    pending[name].clear()
                pending[name].discard(shard)
    missing = sorted(f"{n}[{s}]" if s else n for n, shards in pending.items() for s in shards)
    missing += sorted(set(keep) - set(kept))
    if unexpected or missing:
        raise ValueError(f"load_pretrained: checkpoint at {path!r} does not match the config: "
                         f"unexpected keys {unexpected[:8]}, missing parameters {missing[:8]}")
    if config.partial_rotary_factor != 1.0:
        to_our_order(model)
    return kept


def _shard_ids(model: CausalLM, param_name: str) -> list:
    """Shard ids a parameter is loaded from ([None] for an unfused one, or a fused checkpoint's; MoE experts:
    (kind, expert) pairs, which a fused 3-D checkpoint tensor covers at once)."""
    own = getattr(model.get_parameter(param_name), "shard_ids", None)
    if own is not None:
        return list(own)
    shards = getattr(model.get_submodule(param_name.rpartition(".")[0]), "shards", None)
    if model.config.arch.fused_checkpoint:
        return [None]
    return list(shards) if shards else [None]


def hf_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under HF names (CPU copies), fused projections split back into q/k/v and gate/up (unless
    the family's checkpoints are fused), q/k head dims back in HF's order (partial rotary)."""
    out = {}
    back = qkv_row_index(model.config, inverse=True) if model.config.partial_rotary_factor != 1.0 else None
    for name, p in model.named_parameters():
        if back is not None and ".self_attn.qkv_proj." in name:
            p = p.detach()[back.to(p.device)]
        experts = expert_hf_tensors(name, p)
        if experts is not None:
            out.update(experts)
            continue
        module_name, _, leaf = name.rpartition(".")
        shards = getattr(model.get_submodule(module_name), "shards", None)
        if not shards or model.config.arch.fused_checkpoint:
            out[name] = p.detach()
            continue
        for hf, (ours, shard) in _FUSED.items():
            if module_name.endswith(ours):
                start, rows = shards[shard]
                out[f"{module_name[: -len(ours)]}{hf}.{leaf}"] = p.detach()[start : start + rows]
    return {k: v.contiguous().cpu().clone() for k, v in out.items()}


def save_pretrained(model: CausalLM, path: str) -> None:
    """Write config.json + model.safetensors (HF names) into `path` (created if missing), and the model's
    `generation_settings` (generation_config.json; bos/eos/pad ids in config.json) when it has them."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"save_pretrained: model must be a CausalLM, got {type(model).__name__}")
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    hf_config = model.config.to_hf()
    dtype = next(model.parameters()).dtype
    hf_config["dtype"] = hf_config["torch_dtype"] = str(dtype).replace("torch.", "")
    write_generation_settings(getattr(model, "generation_settings", None), path, hf_config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    save_file(hf_state_dict(model), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def load_tokenizer(path: str):
    """`transformers.AutoTokenizer.from_pretrained(path)` (local directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
