"""FSDP2 (`accelerate launch --config_file configs/accelerate/cpu_fsdp2.yaml`, gloo) of the tiny default in bf16
with mini-batches and micro-batches (ranks padded to equal micro-batch counts): KL exactly 0.0 on every rank,
run-to-run identical weights, resume bitwise from a sharded checkpoint, the final policy loads in
transformers; FSDP2 on one process equals the plain single-process run bitwise; unsupported FSDP settings
refused with one `error:` line before compute."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from onpolicy.config import ExperimentConfig
from onpolicy.trainer.launch import check_launch_env

from tests.distributed.test_launch import (ARGS, ROOT, _accelerate, _one_gpu_launch_and_plain, _rows, _run,
                                          _weights_hash)

pytest.importorskip("accelerate")
STEPS = 3
FSDP_ARGS = [*ARGS, "--trainer.steps", str(STEPS)]


def _out(path) -> list[str]:
    """The run directory, with the SFT cache shared by the module's runs (a sibling of the run directories)."""
    return ["--logging.output_dir", str(path), "--trainer.sft_cache_dir", str(Path(path).parent / "cache")]


def _fsdp_cmd(out, nproc: int = 2, *extra: str) -> list[str]:
    return [*_accelerate("cpu_fsdp2.yaml", nproc), str(ROOT / "recipes/grpo.py"), *FSDP_ARGS,
            *_out(out), *extra]


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_two_ranks_on_policy_run_to_run_resume_and_hf_load(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = _run(_fsdp_cmd(a))
    _ok(res)
    rows = _rows(a)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and res.stdout.count("step 1 |") == 1
    for r in rows:
        assert r["world_size"] == 2 and r["grad_norm"] > 0
        for key in ("onpolicy/kl", "rank0/onpolicy/kl", "rank1/onpolicy/kl", "onpolicy/mismatch_frac"):
            assert r[key] == 0.0, (key, r)
    assert sorted(p.name for p in (a / "checkpoints/step-3/optimizer").glob("*.distcp")) == ["__0_0.distcp",
                                                                                           "__1_0.distcp"]
    # run b stops after step 2 (same weights as a's step 2: run to run), then resumes from its sharded checkpoint
    _ok(_run(_fsdp_cmd(b, 2, "--trainer.steps", "2")))
    assert _weights_hash(b, 2) == _weights_hash(a, 2)
    res = _run(_fsdp_cmd(b, 2, "--trainer.resume", "true"))
    _ok(res)
    assert "resumed after step 2" in res.stdout
    assert _weights_hash(b, STEPS) == _weights_hash(a, STEPS)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(a / f"checkpoints/step-{STEPS}/policy")
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_one_process_fsdp_equals_single_process(tmp_path):
    """World size 1: the FSDP2 path (fully_shard on a 1-rank mesh, DCP checkpoints) gives the plain run's bits."""
    fsdp, plain = tmp_path / "fsdp", tmp_path / "plain"
    _ok(_run(_fsdp_cmd(fsdp, 1, "--trainer.save_every", "0")))
    _ok(_run([sys.executable, str(ROOT / "recipes/grpo.py"), *FSDP_ARGS, "--trainer.save_every", "0",
              *_out(plain)]))
    assert (fsdp / f"checkpoints/step-{STEPS}/optimizer").is_dir()
    assert _weights_hash(fsdp, STEPS) == _weights_hash(plain, STEPS)
    assert [r["onpolicy/kl"] for r in _rows(fsdp)] == [0.0] * STEPS


def test_resume_needs_the_same_layout(tmp_path):
    """A replicated (non-FSDP) checkpoint is not resumed under FSDP2: one error line before compute."""
    out = tmp_path / "plain"
    _ok(_run([sys.executable, str(ROOT / "recipes/grpo.py"), *FSDP_ARGS, "--trainer.steps", "1",
              "--trainer.sft_warmup_steps", "0", *_out(out)]))
    res = _run(_fsdp_cmd(out, 1, "--trainer.steps", "1", "--trainer.sft_warmup_steps", "0", "--trainer.resume", "true"))
    assert res.returncode != 0 and "error: trainer.resume:" in res.stderr and "without FSDP2" in res.stderr
    shutil.rmtree(out)


@pytest.mark.parametrize("env, trainer, message", [
    ({"FSDP_VERSION": "1"}, {}, "fsdp_version 1 is not supported; allowed: 2"),
    ({"FSDP_OFFLOAD_PARAMS": "true"}, {}, "fsdp_offload_params true is not supported"),
    ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, {}, "set trainer.activation_checkpointing"),
    ({}, {"reduction_chunks": 4}, "trainer.reduction_chunks: 4 with FSDP2"),
    ({}, {"grad_reduction": "all_reduce"}, "trainer.grad_reduction: 'all_reduce' with FSDP2"),
])
def test_unsupported_fsdp_settings_refused(env, trainer, message):
    cfg = ExperimentConfig.from_dict({"trainer": trainer})
    base = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
    with pytest.raises(ValueError, match=message):
        check_launch_env(cfg, {**base, **env})
    check_launch_env(ExperimentConfig.from_dict({}), base)


def test_vllm_backend_refused_under_fsdp():
    cfg = ExperimentConfig.from_dict({"engine": {"backend": "vllm"}})
    with pytest.raises(ValueError, match="engine.backend: 'vllm' with FSDP2 is not supported"):
        check_launch_env(cfg, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})


@pytest.mark.gpu
def test_fsdp2_config_on_one_gpu(tmp_path):
    """On the H100: configs/accelerate/fsdp2.yaml with one process (NCCL, fully_shard on a 1-GPU mesh), bf16
    with micro-batches: KL exactly 0.0 every step on CUDA, and the weights equal a plain single-process run."""
    outs = _one_gpu_launch_and_plain(tmp_path, "fsdp2.yaml", FSDP_ARGS, STEPS)
    assert (outs[0] / f"checkpoints/step-{STEPS}/optimizer").is_dir()
    assert _weights_hash(outs[0], STEPS) == _weights_hash(outs[1], STEPS)
