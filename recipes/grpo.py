"""GRPO recipe: `python recipes/grpo.py --config configs/tiny-cpu.yaml [--section.field value ...]`.

Also `accelerate launch --config_file configs/accelerate/<cpu|cpu_ddp|single_gpu|ddp>.yaml recipes/grpo.py
--config ...` on N processes (data parallel; docs/distributed.md). Steps: parse and validate the config
(`onpolicy.config.parse_args`; `--print-config` shows the resolved YAML and exits), check the launched world
size against the config (before any process group or model), `onpolicy.determinism.enable(trainer.seed)`,
check reward names, an `accelerate.Accelerator` (process group: gloo on CPU, NCCL on GPU; `model.device: auto`
becomes its device), then `onpolicy.trainer.train(cfg)` (console output from rank 0 only).
Left out: FSDP and accelerate's mixed_precision (refused before compute). `dapo.py`, `rloo.py`, `dr_grpo.py`
are this recipe with `trainer.algo` fixed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def check_launch(cfg) -> None:
    """Errors before compute: the launched world size (WORLD_SIZE) against the config; exit 2 with one line."""
    from onpolicy.trainer.distributed import check_launch_env, check_world_size, launched_world_size

    try:
        check_launch_env(cfg)
        check_world_size(cfg, launched_world_size())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def build_accelerator(cfg):
    """Accelerator for the process group and device placement; fills in `model.device` when 'auto'."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    if accelerator.device.type == "cuda":
        torch.cuda.set_device(accelerator.device)  # this rank's GPU for every "cuda" tensor
    if cfg.model.device == "auto":
        cfg.model.device = accelerator.device.type
    return accelerator


def main(argv: list[str] | None = None, algo: str | None = None) -> dict:
    from onpolicy import determinism
    from onpolicy.config import parse_args
    from onpolicy.rewards import check_rewards

    cfg = parse_args(argv, forced={"trainer.algo": algo} if algo else None)
    check_launch(cfg)
    determinism.enable(cfg.trainer.seed)
    check_rewards(cfg.rewards)
    accelerator = build_accelerator(cfg)
    from onpolicy.trainer import train

    return train(cfg, log=print if accelerator.is_main_process else (lambda *a, **k: None))


if __name__ == "__main__":
    main()
