"""GRPO recipe: `python recipes/grpo.py --config configs/tiny-cpu.yaml [--section.field value ...]`.

Also `accelerate launch --config_file configs/accelerate/cpu.yaml recipes/grpo.py --config ...`. Steps: parse
and validate the config (`onpolicy.config.parse_args`; `--print-config` shows the resolved YAML and exits),
`onpolicy.determinism.enable(trainer.seed)`, check reward names, an `accelerate.Accelerator` for device
placement (`model.device: auto` becomes the accelerator's device), then `onpolicy.trainer.train(cfg)`.
Left out: multi-process data parallel -- with more than one accelerate process the recipe stops with an error
(one process per run; launch with `num_processes: 1`). `dapo.py`, `rloo.py`, `dr_grpo.py` are this recipe
with `trainer.algo` fixed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build_accelerator(cfg):
    """Accelerator for device placement; fills in `model.device` when 'auto'. Refuses multi-process launches."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    if accelerator.num_processes > 1:
        raise SystemExit(f"recipes: {accelerator.num_processes} processes launched, but multi-process data "
                         "parallel is not implemented yet; launch with num_processes: 1 "
                         "(configs/accelerate/cpu.yaml or single_gpu.yaml)")
    if cfg.model.device == "auto":
        cfg.model.device = accelerator.device.type
    return accelerator


def main(argv: list[str] | None = None, algo: str | None = None) -> dict:
    from onpolicy import determinism
    from onpolicy.config import parse_args
    from onpolicy.rewards import check_rewards

    cfg = parse_args(argv, forced={"trainer.algo": algo} if algo else None)
    determinism.enable(cfg.trainer.seed)
    check_rewards(cfg.rewards)
    build_accelerator(cfg)
    from onpolicy.trainer import train

    return train(cfg)


if __name__ == "__main__":
    main()
