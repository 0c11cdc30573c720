"""What a LoRA run changes in the trainer: which parameters train, and what checkpoints hold.

`trainable_params(cfg, model)`: every parameter without adapters (lora.r: 0); with them, the adapters alone
(attached after the SFT warm-start and the frozen reference model, so both are the base model; `lora.init_from`
loads a PEFT adapter). The optimizer then keeps fp32 masters and AdamW state for the adapters only; the frozen
base weights stay in the model dtype with no gradient and no optimizer state.
Checkpoints: `policy/` holds the base weights (HF format, as without adapters) and `adapter/` the adapters in
PEFT's format (`peft.PeftModel.from_pretrained(base, adapter)`); resume restores both, and the optimizer state
the fp32 masters, so a resumed run continues bit for bit. Left out: FSDP2 with adapters (refused), the vLLM
sampler with adapters (refused at config load).
"""
from __future__ import annotations

import os
from pathlib import Path

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def check_lora_run(cfg, dist) -> None:
    """Start-up checks that need no model: no FSDP2, and `lora.init_from` is an adapter this section can load."""
    lora = cfg.lora
    if not lora.enabled:
        if lora.init_from is not None:
            raise ValueError("lora.init_from: set, but lora.r is 0 (no adapters); allowed: null, or lora.r >= 1")
        return
    if dist is not None and dist.fsdp:
        raise ValueError("lora.r: LoRA adapters are not supported under FSDP2 (the adapters are small: use data "
                         "parallel, configs/accelerate/ddp.yaml); allowed under FSDP2: 0")
    if lora.init_from is not None:
        from onpolicy.lora.peft_io import check_adapter_config

        check_adapter_config(lora.init_from, lora)


def trainable_params(cfg, model, log=print) -> list:
    """The parameters the optimizer trains (see the module docstring); attaches the adapters when lora.r > 0."""
    if not cfg.lora.enabled:
        return [p for p in model.parameters() if p.requires_grad]
    from onpolicy.lora.adapter import attach_lora
    from onpolicy.lora.peft_io import load_adapter

    params = attach_lora(model, cfg.lora, seed=cfg.trainer.seed)
    if cfg.lora.init_from is not None:
        load_adapter(model, cfg.lora.init_from)
    total = sum(p.numel() for p in model.parameters())
    n = sum(p.numel() for p in params)
    log(f"lora: r={cfg.lora.r} on {', '.join(cfg.lora.target_modules)}: {n:,} trainable of {total:,} parameters "
        f"({100 * n / total:.2f}%); base weights frozen in {next(model.parameters()).dtype}")
    return params


def save_checkpoint_adapter(model, step_dir: Path, base_model: str | None = None) -> None:
    """With adapters: write them into `<step_dir>/adapter` (PEFT format); without, nothing."""
    from onpolicy.lora.adapter import has_lora
    from onpolicy.lora.peft_io import save_adapter

    if has_lora(model):
        save_adapter(model, str(Path(step_dir) / ADAPTER_DIR), base_model=base_model)


def restore_policy(model, loaded, step_dir: Path) -> None:
    """Copy the checkpoint's policy (`loaded`, from its policy/) into `model`; with adapters, the base weights
    from there and the adapters from `<step_dir>/adapter`."""
    from onpolicy.lora.adapter import has_lora
    from onpolicy.lora.peft_io import load_adapter
    from onpolicy.model.layers import is_adapter

    if not has_lora(model):
        model.load_state_dict(loaded.state_dict())
        return
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or not all(is_adapter(n) for n in missing):
        raise ValueError(f"trainer.resume: {step_dir}/policy does not match this model: missing "
                         f"{[n for n in missing if not is_adapter(n)][:4]}, unexpected {unexpected[:4]}")
    load_adapter(model, os.path.join(step_dir, ADAPTER_DIR), field="trainer.resume")


def save_final_merged(cfg, model, log=print) -> str | None:
    """`lora.save_merged`: the final policy with the adapters merged, an HF directory `<output_dir>/merged`."""
    if not (cfg.lora.enabled and cfg.lora.save_merged):
        return None
    from onpolicy.lora.peft_io import save_merged

    path = os.path.join(cfg.logging.output_dir, MERGED_DIR)
    save_merged(model, path)
    log(f"lora: merged policy (adapters folded into the weights, HF format) saved to {path}")
    return path
