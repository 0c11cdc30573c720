"""GRPO recipe: `python recipes/grpo.py --config configs/tiny-cpu.yaml [--section.field value ...]`.

Also `accelerate launch --config_file configs/accelerate/<cpu|cpu_ddp|cpu_fsdp2|single_gpu|ddp|fsdp2>.yaml
recipes/grpo.py --config ...` on N processes (data parallel, or FSDP2-sharded masters and optimizer state:
docs/distributed.md; accelerate starts the processes and sets
their environment, `model.device` picks the device). Steps: parse and validate the config
(`onpolicy.config.parse_args`, which also resolves the rewards; `--print-config` shows the resolved YAML and
exits), then `onpolicy.train(cfg)` (onpolicy.api, the Python entry point): check the launch (world size against
the config, the accelerate config) before any process group or model, start the process group when launched on
several processes (gloo on CPU, NCCL on GPU, each rank on its GPU), then `onpolicy.trainer.train`, which seeds,
checks data and the context budget before any compute (console output from rank 0 only). A config, data or
launch error prints one line `error: <message>` and exits 2 (`--debug` or ONPOLICY_DEBUG=1 keeps the traceback).
Under FSDP the recipe pins NCCL's algorithm and protocol (onpolicy.trainer.fsdp.NCCL_PINS) before the process
group exists. Left out: FSDP1 and accelerate's mixed_precision (refused before compute). `dapo.py`, `rloo.py`,
`dr_grpo.py` are this recipe with `trainer.algo` fixed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None, algo: str | None = None) -> dict:
    from onpolicy.config_cli import run_cli

    return run_cli(lambda args: _run(args, algo), argv)


def _run(argv: list[str], algo: str | None) -> dict:
    from onpolicy.api import train
    from onpolicy.config import parse_args

    cfg = parse_args(argv, forced={"trainer.algo": algo} if algo else None)
    return train(cfg)


if __name__ == "__main__":
    main()
