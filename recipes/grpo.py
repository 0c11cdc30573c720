"""GRPO recipe: `python recipes/grpo.py --config configs/tiny-cpu.yaml [--section.field value ...]`.

Also `accelerate launch --config_file configs/accelerate/cpu.yaml recipes/grpo.py --config ...` (accelerate only
starts the process and sets its environment, e.g. CUDA_VISIBLE_DEVICES; `model.device` picks the device).
Steps: refuse a multi-process launch, parse and validate the config (`onpolicy.config.parse_args`;
`--print-config` shows the resolved YAML and exits), then `onpolicy.trainer.train(cfg)`, which seeds, checks
rewards, data and the context budget before any compute. A config, data or launch error prints one line
`error: <message>` and exits 2 (`--debug` or ONPOLICY_DEBUG=1 keeps the traceback).
Left out: multi-process data parallel -- a launch with more than one process stops on every rank (launch
with num_processes: 1). `dapo.py`, `rloo.py`, `dr_grpo.py` are this recipe with `trainer.algo` fixed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None, algo: str | None = None) -> dict:
    from onpolicy.config_cli import run_cli

    return run_cli(lambda args: _run(args, algo), argv)


def _run(argv: list[str], algo: str | None) -> dict:
    from onpolicy.config import parse_args
    from onpolicy.config_cli import check_single_process

    check_single_process()
    cfg = parse_args(argv, forced={"trainer.algo": algo} if algo else None)
    from onpolicy.trainer import train

    return train(cfg)


if __name__ == "__main__":
    main()
