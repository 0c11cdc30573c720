"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(transformers_model, dir)` loads onto the HF base model; and back.

Keys are PEFT's: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (A [r, in]) and `.lora_B.weight`
(B [out, r]); a fused projection's blocks are written under their own HF names. Tensors keep the adapters' dtype
(the copy the model runs), so a checkpoint reloads to the same bits. `save_merged` writes an HF model directory
with s * B @ A added to each targeted weight (in fp32, one rounding): for serving, not bit-identical to the
unmerged forward. Left out: PEFT's other adapter types, `modules_to_save`, rank/alpha patterns, regex or
"all-linear" target strings in a loaded config (lists of names only).
"""
from __future__ import annotations

import json
import os

import torch

from onpolicy.lora.adapter import WHOLE, iter_adapters
from onpolicy.lora.config import PEFT_TARGETS, LoraArgs

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_TARGET_OF = {v: k for k, v in PEFT_TARGETS.items()}  # (our module, block) -> PEFT target name


def _hf_module(module: str, block: str) -> str:
    """HF module path under a layer, e.g. ('self_attn.qkv_proj', 'q') -> 'self_attn.q_proj'."""
    target = _TARGET_OF[(module, None if block == WHOLE else block)]
    return f"{module.rpartition('.')[0]}.{target}"


def _named_blocks(model):
    """(HF module path from the model root, adapter, block) for every adapted block."""
    for i, module, adapter in iter_adapters(model):
        for block in adapter.block_names():
            yield f"model.layers.{i}.{_hf_module(module, block)}", adapter, block


def adapter_config(args: LoraArgs, base_model: str | None = None) -> dict:
    alpha = int(args.alpha) if float(args.alpha).is_integer() else args.alpha
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "r": args.r,
            "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": sorted(args.target_modules),
            "use_rslora": args.use_rslora, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
            "init_lora_weights": True, "modules_to_save": None, "inference_mode": True}


def save_adapter(model, path: str, base_model: str | None = None) -> None:
    """Write `model`'s adapters (attached by `attach_lora`) into `path` (created if missing) in PEFT's format;
    `base_model`: the base model's directory, for adapter_config.json."""
    from safetensors.torch import save_file

    tensors = {}
    for name, adapter, block in _named_blocks(model):
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = adapter.block_A(block).detach().cpu().contiguous().clone()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = adapter.block_B(block).detach().cpu().contiguous().clone()
    if not tensors:
        raise ValueError("save_adapter: the model has no LoRA adapters")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(adapter_config(model.lora_config, base_model), f, indent=2)
    save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})


def check_adapter_config(path: str, args: LoraArgs, field: str = "lora.init_from") -> None:
    """Refuse (naming `field`) an adapter directory whose config differs from `args` in what the weights mean."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file) or not os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        raise ValueError(f"{field}: {path!r} has no {CONFIG_FILE} + {WEIGHTS_FILE}; allowed: a PEFT LoRA adapter "
                         "directory")
    with open(file) as f:
        saved = json.load(f)
    want = adapter_config(args)
    targets = saved.get("target_modules")
    checks = [("peft_type", saved.get("peft_type") == "LORA", "LORA"),
              ("r", saved.get("r") == args.r, f"lora.r = {args.r}"),
              ("lora_alpha", saved.get("lora_alpha") is not None and float(saved["lora_alpha"]) == args.alpha,
               f"lora.alpha = {args.alpha}"),
              ("use_rslora", bool(saved.get("use_rslora", False)) == args.use_rslora,
               f"lora.use_rslora = {args.use_rslora}"),
              ("target_modules", isinstance(targets, list) and sorted(targets) == want["target_modules"],
               f"lora.target_modules = {want['target_modules']}"),
              ("bias", saved.get("bias", "none") == "none", "'none'"),
              ("use_dora", not saved.get("use_dora", False), "false"),
              ("modules_to_save", not saved.get("modules_to_save"), "null"),
              ("rank_pattern", not saved.get("rank_pattern"), "{} (one rank)"),
              ("alpha_pattern", not saved.get("alpha_pattern"), "{} (one alpha)"),
              ("layers_to_transform", saved.get("layers_to_transform") is None, "null (every layer)")]
    for key, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{field}: {CONFIG_FILE} has {key} = {saved.get(key)!r}; allowed: {allowed}")


@torch.no_grad()
def load_adapter(model, path: str, field: str = "lora.init_from") -> None:
    """Fill `model`'s adapters (attached by `attach_lora`) from the PEFT adapter directory `path`; errors name
    `field`."""
    from safetensors import safe_open

    check_adapter_config(path, model.lora_config, field)
    expected = {}
    for name, adapter, block in _named_blocks(model):
        expected[f"{_PREFIX}{name}.lora_A.weight"] = adapter.block_A(block)
        expected[f"{_PREFIX}{name}.lora_B.weight"] = adapter.block_B(block)
    with safe_open(os.path.join(path, WEIGHTS_FILE), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
        if missing or unexpected:
            raise ValueError(f"{field}: {WEIGHTS_FILE} does not match this model: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
        for key, param in expected.items():
            tensor = f.get_tensor(key)
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"{field}: {key} has shape {tuple(tensor.shape)}, this model expects "
                                 f"{tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))


def read_adapter_args(path: str, field: str = "adapter") -> LoraArgs:
    """The `LoraArgs` an adapter directory was saved with (r, lora_alpha, use_rslora, target_modules)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ValueError(f"{field}: {path!r} has no {CONFIG_FILE}; allowed: a PEFT LoRA adapter directory")
    with open(file) as f:
        saved = json.load(f)
    targets = saved.get("target_modules")
    if not isinstance(targets, list) or not set(targets) <= set(PEFT_TARGETS):
        raise ValueError(f"{field}: {CONFIG_FILE} has target_modules = {targets!r}; allowed: a list of names from "
                         f"{', '.join(PEFT_TARGETS)}")
    return LoraArgs(r=int(saved.get("r", 0)), alpha=float(saved.get("lora_alpha", 0)), target_modules=targets,
                    use_rslora=bool(saved.get("use_rslora", False)))


def attach_peft_adapter(model, path: str, field: str = "adapter") -> None:
    """Attach adapters shaped as the PEFT adapter directory `path` says and load its weights (e.g. to sample or
    diagnose a LoRA run's final policy: base model + adapter/)."""
    from onpolicy.lora.adapter import attach_lora

    attach_lora(model, read_adapter_args(path, field))
    load_adapter(model, path, field)


@torch.no_grad()
def merged_state(model) -> dict[str, torch.Tensor]:
    """`hf_state_dict(model)` with each adapted weight replaced by W + s * B @ A (fp32 sum, one rounding)."""
    from onpolicy.model.loading import hf_state_dict

    state = hf_state_dict(model)
    for name, adapter, block in _named_blocks(model):
        key = f"{name}.weight"
        w = state[key]
        state[key] = (w.float() + adapter.delta_weight(block).cpu()).to(w.dtype).contiguous()
    return state


def save_merged(model, path: str) -> None:
    """An HF model directory with the adapters merged into the weights (transformers loads it as is)."""
    from onpolicy.model.loading import save_pretrained

    save_pretrained(model, path, state=merged_state(model))
