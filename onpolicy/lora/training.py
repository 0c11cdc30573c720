"""What a LoRA run changes in the trainer: which parameters train, and what checkpoints hold.

`LoraAdapters` is the trainer's `TrainableParams` (onpolicy.trainer.trainable) when lora.r > 0 (`for_config`
picks it): its `select` attaches the adapters and returns them alone (the trainer calls it after the SFT
warm-start and the frozen reference model, so both are the base model; `lora.init_from` loads a PEFT adapter).
The optimizer then keeps fp32 masters and AdamW state for the adapters only; the frozen base weights stay in
the model dtype with no gradient and no optimizer state.
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


def check_lora_run(cfg, strategy) -> None:
    """Start-up checks that need no model: no FSDP2 (`strategy.shards_masters`), and `lora.init_from` is an
    adapter this section can load."""
    lora = cfg.lora
    if not lora.enabled:
        if lora.init_from is not None:
            raise ValueError("lora.init_from: set, but lora.r is 0 (no adapters); allowed: null, or lora.r >= 1")
        return
    if strategy is not None and strategy.shards_masters:
        raise ValueError("lora.r: LoRA adapters are not supported under FSDP2 (the adapters are small: use data "
                         "parallel, configs/accelerate/ddp.yaml); allowed under FSDP2: 0")
    if lora.init_from is not None:
        from onpolicy.lora.peft_io import check_adapter_config

        check_adapter_config(lora.init_from, lora)


class LoraAdapters:
    """`TrainableParams`: attach adapters (`args`, values seeded by `seed`, or loaded from `args.init_from`)
    and select them alone; every base weight is frozen."""

    def __init__(self, args, seed: int = 0, log=print):
        self.args, self.seed, self.log = args, seed, log

    def select(self, model) -> list[tuple[str, object]]:
        from onpolicy.lora.adapter import attach_lora
        from onpolicy.lora.peft_io import load_adapter

        attach_lora(model, self.args, seed=self.seed)
        if self.args.init_from is not None:
            load_adapter(model, self.args.init_from)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        total, n = sum(p.numel() for p in model.parameters()), sum(p.numel() for _, p in params)
        self.log(f"lora: r={self.args.r} on {', '.join(self.args.target_modules)}: {n:,} trainable of {total:,} "
                 f"parameters ({100 * n / total:.2f}%); base weights frozen in {next(model.parameters()).dtype}")
        return params

    @classmethod
    def for_config(cls, cfg, parts, log=print):
        """`parts` (trainer.TrainerParts) with LoRA adapters as what is trainable when lora.r > 0."""
        import dataclasses

        from onpolicy.trainer.trainable import FullFineTuning

        if not cfg.lora.enabled:
            return parts
        if type(parts.trainable) is not FullFineTuning:
            raise ValueError(f"lora.r: {cfg.lora.r} asks for LoRA adapters, but the caller's TrainerParts.trainable "
                             f"is {type(parts.trainable).__name__}; allowed: lora.r 0 with a custom selection")
        return dataclasses.replace(parts, trainable=cls(cfg.lora, seed=cfg.trainer.seed, log=log))


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
