"""scripts/onpolicy_vs_is.py: every arm's command, with the GPU preset, parses as a config of the recipe."""
import argparse
from pathlib import Path

from onpolicy.config import parse_args
from scripts import onpolicy_vs_is as experiment


def test_gpu_preset_arms_parse(tmp_path):
    args = argparse.Namespace(steps=5, eval_every=5, eval_examples=8, out=str(tmp_path),
                              extra=list(experiment.GPU_PRESET))
    for arm in experiment.ARMS:
        cmd = experiment.arm_command(args, arm)
        assert Path(cmd[1]).name == "grpo.py"
        cfg = parse_args(cmd[2:])
        assert cfg.model.device == "cuda" and cfg.model.tiny["hidden_size"] == 1024 and cfg.model.dtype == "bfloat16"
        assert cfg.trainer.invariant == (arm == "a_invariant")
