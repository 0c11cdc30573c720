"""Multi-turn rollouts on two ranks (`accelerate launch`, gloo, CPU): each rank runs its share of the step's
trajectories, the trajectories are gathered in rank order, KL is exactly 0.0 on every rank, and the run equals
world size 1 (same reduction chunks) bitwise: metrics and weights; with FSDP2-sharded masters, KL is 0.0 on
every rank too."""
from __future__ import annotations

import sys

import pytest

from tests.distributed.test_launch import ROOT, TIMING, _accelerate, _rows, _run, _weights_hash

pytest.importorskip("accelerate")
STEPS = 2
ARGS = ["--config", str(ROOT / "configs/tiny-cpu-multiturn.yaml"), "--trainer.steps", str(STEPS),
        "--trainer.prompts_per_step", "4", "--sampling.num_generations", "4", "--trainer.reduction_chunks", "2",
        "--trainer.micro_batch_tokens", "160", "--logging.plot", "false"]


def test_two_ranks_equal_one_rank_bitwise(tmp_path):
    outs = {}
    for name, launcher in (("two", [*_accelerate("cpu_ddp.yaml", 2)]), ("one", [sys.executable])):
        out = tmp_path / name
        res = _run([*launcher, str(ROOT / "recipes/grpo.py"), *ARGS, "--logging.output_dir", str(out)])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs[name] = out
    two, one = _rows(outs["two"]), _rows(outs["one"])
    for r in two:
        assert r["world_size"] == 2 and r["env/turns_mean"] > 1
        assert all(r[k] == 0.0 for k in ("onpolicy/kl", "rank0/onpolicy/kl", "rank1/onpolicy/kl",
                                         "rank0/onpolicy/mismatch_frac", "rank1/onpolicy/mismatch_frac"))
    keep = lambda r: {k: v for k, v in r.items()  # noqa: E731
                      if not k.startswith(TIMING + ("rank",)) and k != "world_size"}
    assert [keep(r) for r in one] == [keep(r) for r in two]
    assert _weights_hash(outs["one"], STEPS) == _weights_hash(outs["two"], STEPS)


def test_fsdp2_two_ranks_on_policy(tmp_path):
    """FSDP2-sharded masters: each rank's engine gets the full bf16 weights, trajectories stay on-policy."""
    out = tmp_path / "fsdp"
    res = _run([*_accelerate("cpu_fsdp2.yaml", 2), str(ROOT / "recipes/grpo.py"), *ARGS, "--model.dtype", "bfloat16",
                "--logging.output_dir", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == STEPS and all(r["world_size"] == 2 and r["env/turns_mean"] > 1 for r in rows)
    assert all(r[k] == 0.0 for r in rows for k in ("rank0/onpolicy/kl", "rank1/onpolicy/kl",
                                                    "rank0/onpolicy/mismatch_frac", "rank1/onpolicy/mismatch_frac"))
    assert any(r["grad_norm"] > 0 for r in rows)
