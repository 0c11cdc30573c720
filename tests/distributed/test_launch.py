"""`accelerate launch --num_processes 2` (gloo, CPU) of the tiny default with mini-batches and micro-batches:
KL exactly 0.0 on every rank, run-to-run identical weights, world size 1 == world size 2 bitwise (same
reduction chunks; the held-out evaluation every 2 steps, its 5 problems shared 3 + 2 across the ranks, included),
kill -9 of one rank reported and resumed bitwise, and world sizes the config cannot take
refused with one `error:` line (exit 2) before compute."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
ARGS = ["--config", str(ROOT / "configs/tiny-cpu.yaml"), "--trainer.steps", str(STEPS), "--trainer.save_every", "1",
        "--trainer.mini_batches", "2", "--trainer.micro_batch_tokens", "48", "--trainer.sft_warmup_steps", "40",
        "--model.dtype", "bfloat16", "--logging.plot", "false", "--trainer.eval_every", "2", "--eval.num_examples", "5"]
TIMING = ("time/", "throughput/")


def _out(path) -> list[str]:
    """The run directory, with the SFT cache shared by the module's runs (a sibling of the run directories)."""
    return ["--logging.output_dir", str(path), "--trainer.sft_cache_dir", str(Path(path).parent / "cache")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(config: str, nproc: int) -> list[str]:
    """`python -m accelerate.commands.launch` with configs/accelerate/<config> on nproc processes, a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs/accelerate" / config), "--num_processes", str(nproc),
            "--main_process_port", str(_free_port())]


def _launch_cmd(out: Path, *extra: str) -> list[str]:
    return [*_accelerate("cpu_ddp.yaml", 2), str(ROOT / "recipes/grpo.py"), *ARGS, *_out(out),
            *extra]


def _one_gpu_launch_and_plain(tmp_path: Path, config: str, args: list[str], steps: int) -> list[Path]:
    """Output dirs of configs/accelerate/<config> on one process and of a plain run (model.device auto -> cuda),
    each checked: KL exactly 0.0 every step, world_size 1, CUDA peak memory logged."""
    outs = []
    for name, launcher in (("launched", _accelerate(config, 1)), ("plain", [sys.executable])):
        out = tmp_path / name
        res = _run([*launcher, str(ROOT / "recipes/grpo.py"), *args, "--model.device", "auto",
                    *_out(out)])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        rows = _rows(out)
        assert len(rows) == steps and all(r["onpolicy/kl"] == 0.0 and r["world_size"] == 1 for r in rows)
        assert all("memory/train_peak_gib" in r for r in rows)  # logged on CUDA only: model.device auto -> cuda
        outs.append(out)
    return outs


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kw.pop("env", {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, **kw)


def _weights_hash(out: Path, step: int = STEPS) -> str:
    return hashlib.sha256((out / f"checkpoints/step-{step}/policy/model.safetensors").read_bytes()).hexdigest()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two identical world-size-2 runs (sharing one SFT cache under the same parent directory)."""
    root = tmp_path_factory.mktemp("dist")
    outs = []
    for name in ("a", "b"):
        res = _run(_launch_cmd(root / name))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs.append((root / name, res))
    return root, outs


def test_two_ranks_on_policy_and_run_to_run_identical(runs):
    _, [(a, res_a), (b, _)] = runs
    rows = _rows(a)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 alone writes metrics.jsonl
    for r in rows:
        assert r["world_size"] == 2
        for key in ("onpolicy/kl", "rank0/onpolicy/kl", "rank1/onpolicy/kl", "onpolicy/mismatch_frac",
                    "rank0/onpolicy/mismatch_frac", "rank1/onpolicy/mismatch_frac"):
            assert r[key] == 0.0, (key, r)
    assert any(r["grad_norm"] > 0 for r in rows)  # the updates did move the weights
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [2, 4]  # both ranks' shares gathered on rank 0
    assert res_a.stdout.count("step 1 |") == 1  # console from rank 0 only
    assert _weights_hash(a) == _weights_hash(b)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rs]  # noqa: E731
    assert strip(_rows(a)) == strip(_rows(b))


def test_world_size_1_equals_world_size_2_bitwise(runs):
    """One process with reduction_chunks 2 sums the same chunk gradients in the same tree as two ranks."""
    root, [(a, _), _] = runs
    one = root / "one"
    res = _run([sys.executable, str(ROOT / "recipes/grpo.py"), *ARGS, *_out(one),
                "--trainer.reduction_chunks", "2"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _weights_hash(one) == _weights_hash(a)
    keep = lambda r: {k: v for k, v in r.items() if not k.startswith(TIMING + ("rank",)) and k != "world_size"}  # noqa: E731
    assert [keep(r) for r in _rows(one)] == [keep(r) for r in _rows(a)]
    assert all(r["world_size"] == 1 for r in _rows(one))


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (their RANK environment variable)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0") if ppid == launcher_pid else []
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(proc.name)
    return out


def test_kill_one_rank_is_reported_and_resume_is_bitwise(runs):
    root, [(a, _), _] = runs
    out = root / "killed"
    proc = subprocess.Popen(_launch_cmd(out), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "checkpoints/step-1").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        pids = _worker_pids(proc.pid)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGKILL" in log and "rank" in log, log[-3000:]  # the launcher names the signal and the failed rank
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert saved and saved[-1] < STEPS, saved
    res = _run(_launch_cmd(out, "--trainer.resume", "true"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resumed after step {saved[-1]}" in res.stdout
    assert _weights_hash(out) == _weights_hash(a)
    assert [r["step"] for r in _rows(out)] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("world, extra, message", [
    ("3", [], "world size 3"),
    ("4", ["--trainer.prompts_per_step", "6"], "trainer.prompts_per_step: 6 is not divisible by the world size 4"),
])
def test_world_size_refused_before_compute(tmp_path, world, extra, message):
    res = _run([sys.executable, str(ROOT / "recipes/grpo.py"), *ARGS, "--logging.output_dir",
                str(tmp_path / "out"), *extra], env={"WORLD_SIZE": world})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


NAN_ON_RANK1 = '''
import os, sys
from dataclasses import replace
sys.path[:0] = [{root!r}]
from onpolicy.trainer.launch import start_processes
from onpolicy.config import parse_args
from onpolicy.cli import command
from onpolicy.trainer import SingleTurnRollouts, TrainerParts, train
from onpolicy.trainer.losses import slice_loss
state = {{}}
class StepSeen(SingleTurnRollouts):
    def collect(self, rows, step):
        state["step"] = step
        return super().collect(rows, step)
def nan_on_rank1(*a, **k):
    out = slice_loss(*a, **k)
    return replace(out, loss=out.loss * float("nan")) if os.environ["RANK"] == "1" and state["step"] == 1 else out
def main(argv):
    cfg = parse_args(argv)
    start_processes(cfg)
    return train(cfg, parts=TrainerParts(rollouts=StepSeen.for_trainer, loss_fn=nan_on_rank1))
command(main)
'''


def test_non_finite_loss_on_one_rank_stops_the_job_without_hanging(tmp_path):
    """Rank 1's loss turns NaN in step 2 while rank 0 waits in the gradient reduction: rank 1 reports it and
    saves nothing collectively, the launcher stops rank 0; step 1's checkpoint is the last good policy."""
    script = tmp_path / "nan_rank1.py"
    script.write_text(NAN_ON_RANK1.format(root=str(ROOT)))
    cmd = _launch_cmd(tmp_path / "out")
    cmd[cmd.index(str(ROOT / "recipes/grpo.py"))] = str(script)
    res = _run(cmd)
    log = res.stdout + res.stderr
    assert res.returncode != 0
    assert "step 2: loss non-finite" in log and "step-1/policy" in log, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "out/checkpoints").glob("step-*")) == ["step-1"]


@pytest.mark.gpu
def test_ddp_config_on_one_gpu_chunked_reduction(tmp_path):
    """On the H100: configs/accelerate/ddp.yaml with one process (NCCL process group, world size 1) and two
    reduction chunks (the chunk tree on CUDA), bf16 with micro-batches: KL exactly 0.0 every step, and the
    weights equal a plain single-process run with the same chunks."""
    outs = _one_gpu_launch_and_plain(tmp_path, "ddp.yaml", [*ARGS, "--trainer.reduction_chunks", "2"], STEPS)
    assert _weights_hash(outs[0]) == _weights_hash(outs[1])
