"""Qwen3-MoE on 2 gloo CPU ranks (`accelerate launch --num_processes 2`): a tiny transformers-built checkpoint
(16 experts, top-8, bf16), 3 GRPO steps under DDP (configs/accelerate/cpu_ddp.yaml) and under FSDP2
(cpu_fsdp2.yaml, the 3-D expert weights sharded along the expert dimension): KL and routing mismatch exactly 0.0
globally and on every rank; two FSDP2 runs give identical weights; DDP on 2 ranks equals one process with the
same reduction chunks bitwise; the gathered routing metric covers every rank's tokens. The reward counts digits
(a random model never solves the task), so the gradients are non-zero. GPU (`gpu` marker, a host with 2+ GPUs):
DDP and FSDP2 on NCCL, on policy and run to run. Left out: expert parallelism (no strategy places experts on
ranks)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from onpolicy.trainer.distributed import Dist, gather_parity
from tests.distributed.test_launch import ROOT, _accelerate, _rows, _run, _weights_hash

pytest.importorskip("accelerate")
STEPS = 3
KEYS = ("onpolicy/kl", "onpolicy/mismatch_frac", "onpolicy/routing_mismatch")


def digit_count(prompts, completions, **kwargs):
    """The reward of these runs (imported by path in the launched processes)."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    from onpolicy.model.tiny import CharTokenizer
    from tests.model.arch_cases import random_model

    path = tmp_path_factory.mktemp("qwen3-moe")
    random_model("qwen3-moe", seed=5).save_pretrained(path)
    CharTokenizer().save_pretrained(path)
    return path


def _args(model: Path, out: Path) -> list[str]:
    return [str(ROOT / "recipes/grpo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--model.path", str(model),
            "--model.tiny", "{}", "--model.dtype", "bfloat16", "--trainer.steps", str(STEPS),
            "--trainer.save_every", str(STEPS), "--trainer.prompts_per_step", "4", "--sampling.num_generations", "4",
            "--trainer.mini_batches", "2", "--trainer.micro_batch_tokens", "48", "--trainer.sft_warmup_steps", "0",
            "--trainer.lr", "2e-3", "--rewards", "[{name: 'tests.distributed.test_moe_dist:digit_count'}]",
            "--logging.plot", "false", "--logging.output_dir", str(out)]


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _check_on_policy(out: Path) -> None:
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and any(r["grad_norm"] > 0 for r in rows)
    for r in rows:
        assert r["world_size"] == 2
        for key in KEYS:
            for name in (key, f"rank0/{key}", f"rank1/{key}"):
                assert r[name] == 0.0, (name, r)


class _TwoRanks(Dist):
    """Rank 0 of two, whose `gather` returns the given other rank's object after its own."""

    def __init__(self, other):
        super().__init__(0, 2)
        object.__setattr__(self, "other", other)

    def gather(self, obj) -> list:
        return [obj, self.other]


def test_routing_mismatch_gathered_over_every_ranks_tokens():
    """Global value: over all tokens of both ranks (1 of 6 here, not the mean of the ranks' fractions)."""
    lps = [torch.zeros(3)]
    rank1 = (lps, lps, torch.tensor([False, False]))
    out = gather_parity(_TwoRanks(rank1), lps, lps, torch.tensor([True, False, False, False]))
    assert out["onpolicy/routing_mismatch"] == 1 / 6
    assert out["rank0/onpolicy/routing_mismatch"] == 0.25 and out["rank1/onpolicy/routing_mismatch"] == 0.0
    assert out["onpolicy/kl"] == 0.0 and "rank1/onpolicy/kl" in out
    assert "onpolicy/routing_mismatch" not in gather_parity(_TwoRanks((lps, lps, None)), lps, lps)  # dense


def test_ddp_two_ranks_on_policy_and_equal_to_one_process(moe_dir, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _ok(_run([*_accelerate("cpu_ddp.yaml", 2), *_args(moe_dir, two)]))
    _check_on_policy(two)
    _ok(_run([sys.executable, *_args(moe_dir, one), "--trainer.reduction_chunks", "2"]))
    assert _weights_hash(one, STEPS) == _weights_hash(two, STEPS)
    assert [r["onpolicy/routing_mismatch"] for r in _rows(one)] == [0.0] * STEPS


def test_fsdp2_two_ranks_on_policy_and_run_to_run_identical(moe_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        _ok(_run([*_accelerate("cpu_fsdp2.yaml", 2), *_args(moe_dir, out)]))
        _check_on_policy(out)
    assert _weights_hash(a, STEPS) == _weights_hash(b, STEPS)


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml"])
def test_two_gpus_nccl_on_policy_and_run_to_run_identical(moe_dir, tmp_path, config):
    """On a host with 2+ GPUs: the same runs on 2 GPUs over NCCL (model.device auto -> cuda): KL and routing
    mismatch exactly 0.0 on every rank, and two runs give identical weights."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        _ok(_run([*_accelerate(config, 2), *_args(moe_dir, out), "--model.device", "auto"]))
        _check_on_policy(out)
    assert _weights_hash(a, STEPS) == _weights_hash(b, STEPS)


def _frozen_router_worker(rank: int, init_file: str, out: dict) -> None:
    import torch.distributed as td

    from onpolicy.model import CausalLM
    from onpolicy.model.moe import freeze_router
    from onpolicy.model.tiny import tiny_config
    from onpolicy.trainer.fsdp import idle_micro_batch, shard_trainer

    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=1)
    try:
        torch.manual_seed(0)
        model = CausalLM(tiny_config(architecture="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=32, num_hidden_layers=2, head_dim=64))
        freeze_router(model)
        sharded = shard_trainer(model, torch.device("cpu"))
        idle_micro_batch(sharded)
        out["frozen"] = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
        out["no_grad"] = sorted(n for n, p in sharded.named_parameters() if p.grad is None)
    finally:
        td.destroy_process_group()


def test_fsdp2_trainer_keeps_frozen_routers_frozen(tmp_path):
    """`model.freeze_router` under FSDP2: the sharded fp32 trainer module's routers get no gradients either."""
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(_frozen_router_worker, args=(str(tmp_path / "init"), out), nprocs=1, join=True)
    assert out["frozen"] and all(".gate." in n for n in out["frozen"])
    assert out["no_grad"] == out["frozen"]
