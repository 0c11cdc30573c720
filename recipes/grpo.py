"""GRPO recipe: `python recipes/grpo.py --config configs/tiny-cpu.yaml [--section.field value ...]`.

Also `accelerate launch --config_file configs/accelerate/<cpu|cpu_ddp|cpu_fsdp2|single_gpu|ddp|fsdp2>.yaml
recipes/grpo.py --config ...` on N processes (data parallel, or FSDP2-sharded masters and optimizer state:
docs/distributed.md; accelerate starts the processes and sets their environment, `model.device` picks the
device). Steps (`onpolicy.cli.train_command`): parse and validate
the config (`onpolicy.config.parse_args`, which also resolves the rewards; `--print-config` shows the resolved
YAML and exits), then `onpolicy.train(cfg)` (onpolicy.api, the Python entry point): check the launch (world size
against the config, the accelerate config: onpolicy.trainer.launch) before any process group or model, start the
process group when the launch needs one (gloo on CPU, NCCL on GPU, each rank on its GPU; under FSDP NCCL's
algorithm and protocol pinned first), then `onpolicy.trainer.train`, which seeds, checks data and the context
budget before any compute (console output from rank 0 only). A config, data or launch error prints one line
`error: <message>` and exits 2 (`--debug` or ONPOLICY_DEBUG=1 keeps the traceback). Left out: FSDP1 and
accelerate's mixed_precision (refused before compute). `dapo.py`, `rloo.py`, `dr_grpo.py` are this recipe with
`trainer.algo` fixed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None, algo: str | None = None) -> dict:
    from onpolicy.cli import train_command

    return train_command(argv, algo)


if __name__ == "__main__":
    main()
