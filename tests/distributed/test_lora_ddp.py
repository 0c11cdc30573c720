"""LoRA under data parallel: `accelerate launch --num_processes 2` (gloo, CPU) of the tiny default with
adapters, mini- and micro-batches and a bf16 model: KL exactly 0.0 on every rank, and the adapters equal a
world-size-1 run with the same reduction chunks bitwise (the adapters' fp32 master gradients go through the
same fixed-order tree as full weights). FSDP2 with adapters is refused before compute."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
ARGS = ["--config", str(ROOT / "configs/tiny-cpu-lora.yaml"), "--trainer.steps", str(STEPS),
        "--trainer.mini_batches", "2", "--trainer.micro_batch_tokens", "48", "--trainer.sft_warmup_steps", "40",
        "--model.dtype", "bfloat16", "--lora.r", "4", "--trainer.lr", "2e-3", "--logging.plot", "false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(launcher: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    """recipes/grpo.py under `launcher` (the SFT cache shared by the test's runs)."""
    cmd = [*launcher, str(ROOT / "recipes/grpo.py"), *ARGS, *extra, "--logging.output_dir", str(out),
           "--trainer.sft_cache_dir", str(out.parent / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def _launch(config: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate" / config),
            "--num_processes", str(nproc), "--main_process_port", str(_free_port())]


def _adapter_hash(out: Path) -> str:
    return hashlib.sha256((out / f"checkpoints/step-{STEPS}/adapter/adapter_model.safetensors").read_bytes()).hexdigest()


def test_lora_two_ranks_on_policy_and_equal_to_one_rank(tmp_path):
    two = tmp_path / "two"
    res = _run(_launch("cpu_ddp.yaml"), two)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and any(r["grad_norm"] > 0 for r in rows)
    for r in rows:
        assert r["world_size"] == 2
        for key in ("onpolicy/kl", "rank0/onpolicy/kl", "rank1/onpolicy/kl", "onpolicy/mismatch_frac"):
            assert r[key] == 0.0, (key, r)
    one = tmp_path / "one"
    res = _run([sys.executable], one, "--trainer.reduction_chunks", "2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _adapter_hash(one) == _adapter_hash(two)
    base = lambda o: hashlib.sha256((o / f"checkpoints/step-{STEPS}/policy/model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert base(one) == base(two)


def test_lora_under_fsdp2_refused_before_compute(tmp_path):
    res = _run(_launch("cpu_fsdp2.yaml"), tmp_path / "out")
    assert res.returncode != 0
    assert "lora.r: LoRA adapters are not supported under FSDP2" in res.stdout + res.stderr
