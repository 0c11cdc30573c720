"""Recipes from the command line: accelerate launches, one-line user errors (exit 2), --debug, refused
launches (a world size the config cannot use, accelerate's one-process launcher asked for several). Each test runs the recipe in a subprocess (1 small RL step where it gets that far)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_accelerate_launch_recipe(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu.yaml recipes/dapo.py ...` runs the recipe to the
    end (one small RL step: launch check, parse, determinism, rewards and context checks, model/data/engine
    build, logger)."""
    pytest.importorskip("accelerate")
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"), "--num_cpu_threads_per_process", "2",
           str(ROOT / "recipes/dapo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"),
           "--trainer.steps", "1", "--trainer.prompts_per_step", "2", "--sampling.num_generations", "2",
           "--trainer.sft_warmup_steps", "0", "--trainer.lr=3e-4", "--data.num_examples", "8",
           "--logging.output_dir", str(out_dir), "--logging.report_to", "[console]"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["trainer"]["algo"] == "dapo" and saved["trainer"]["lr"] == 3e-4 and saved["model"]["device"] == "cpu"
    assert saved["trainer"]["epsilon_high"] == 0.28  # dapo's default, resolved after the recipe fixed the algo


@pytest.mark.gpu
def test_accelerate_launch_single_gpu_one_step(tmp_path):
    """On the H100: the recipe under configs/accelerate/single_gpu.yaml runs the tiny model on CUDA (model.device
    picks the device; accelerate only sets the environment) for one RL step with KL exactly 0."""
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "configs/accelerate/single_gpu.yaml"), str(ROOT / "recipes/grpo.py"),
           "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--model.device", "cuda", "--trainer.steps", "1",
           "--trainer.prompts_per_step", "2", "--sampling.num_generations", "2", "--data.num_examples", "8",
           "--trainer.sft_warmup_steps", "0", "--logging.output_dir", str(out_dir), "--logging.plot", "false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert yaml.safe_load((out_dir / "config.yaml").read_text())["model"]["device"] == "cuda"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["onpolicy/kl"] == 0.0 and rows[0]["onpolicy/mismatch_frac"] == 0.0


def _recipe(tmp_path, *args, env=None):
    cmd = [sys.executable, str(ROOT / "recipes/grpo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"),
           "--trainer.steps", "1", "--trainer.sft_warmup_steps", "0", "--data.num_examples", "8",
           "--logging.output_dir", str(tmp_path / "run"), "--logging.plot", "false", *args]
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU", "ONPOLICY_DEBUG")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**full_env, **(env or {})})


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("case, expect", [
    ("empty_jsonl", "is empty"),
    ("bad_json_line", "line 2: invalid JSON"),
    ("bad_yaml", "is not valid YAML: line 3, column 10: mapping values are not allowed here"),
    ("tiny_block_hides_path", "model.path: '/nonexistent/model' is not a directory"),
    ("context", "data.max_prompt_tokens (60) + sampling.max_tokens (6) = 66 exceeds the model's context "
                "max_position_embeddings=64"),
    ("bad_value", "trainer.lr: got -1.0; allowed: a float > 0"),
    ("world_size", "trainer.prompts_per_step: 3 is not divisible by the world size 2"),
    ("accelerate_simple_launcher", "accelerate was asked for num_processes > 1"),
])
def test_recipe_user_errors_are_one_line(tmp_path, case, expect):
    """Config, data and launch errors: one `error:` line naming the file/field, exit status 2, no traceback."""
    env, args = None, []
    if case == "empty_jsonl":
        args = ["--data.dataset", _write(tmp_path, "e.jsonl", "")]
    elif case == "bad_json_line":
        bad = '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "x" "a"}\n'
        args = ["--data.dataset", _write(tmp_path, "b.jsonl", bad)]
    elif case == "bad_yaml":
        args = ["--config", _write(tmp_path, "bad.yaml", "trainer:\n  lr: 1\n    steps: 2\n")]
    elif case == "tiny_block_hides_path":
        args = ["--model.path", "/nonexistent/model"]  # tiny-cpu.yaml keeps its model.tiny block
    elif case == "context":
        args = ["--data.max_prompt_tokens", "60"]  # tiny-cpu.yaml: max_tokens 6, max_position_embeddings 64
    elif case == "bad_value":
        args = ["--trainer.lr", "-1"]
    elif case == "world_size":  # refused before any process group is started
        env, args = {"WORLD_SIZE": "2", "RANK": "1"}, ["--trainer.prompts_per_step", "3"]
    else:
        env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    out = _recipe(tmp_path, *args, env=env)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert expect in lines[0] and "Traceback" not in out.stderr, out.stderr[-3000:]
    if case == "bad_yaml":
        assert "bad.yaml" in lines[0]
    if case in ("empty_jsonl", "bad_json_line"):
        assert str(tmp_path) in lines[0]


def test_recipe_debug_keeps_the_traceback(tmp_path):
    for extra, env in ((["--debug"], None), ([], {"ONPOLICY_DEBUG": "1"})):
        out = _recipe(tmp_path, "--trainer.lr", "-1", *extra, env=env)
        assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError: trainer.lr" in out.stderr


def test_torchrun_launch_refused_with_the_reason_in_its_summary(tmp_path):
    """`accelerate launch --multi_gpu` runs torchrun: a world size the config cannot use stops every rank with
    one `error:` line, and torchrun's failure summary ("Root Cause") carries that line instead of 'N/A'."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "recipes/grpo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"),
           "--trainer.prompts_per_step", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    expect = "error: trainer.prompts_per_step: 3 is not divisible by the world size 2"
    first = [line for line in text.splitlines() if line.startswith(expect)]
    assert 1 <= len(first) <= 2, text[-3000:]
    root = text[text.index("Root Cause"):]
    assert "traceback : " + expect in root, text[-3000:]


def _docs_example_files(root: Path) -> list[Path]:
    """Write the worked example of docs/rewards.md (each fenced block after a line ending in `my_task/<file>`:)."""
    import re

    text = (ROOT / "docs/rewards.md").read_text()
    written = []
    for name, body in re.findall(r"`(my_task/[\w.]+)`[^\n]*:\n\n```\w+\n(.*?)```", text, flags=re.S):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        written.append(path)
    return written


def test_docs_rewards_worked_example(tmp_path):
    """docs/rewards.md's example as written: own JSONL + own reward module found next to the config (run from
    another directory, no PYTHONPATH) + the YAML + the command; each reward is logged beside the total."""
    files = _docs_example_files(tmp_path)
    assert sorted(p.name for p in files) == ["config.yaml", "my_rewards.py", "train.jsonl"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU",
                                                           "PYTHONPATH")}
    out = subprocess.run([sys.executable, str(ROOT / "recipes/grpo.py"), "--config", "my_task/config.yaml"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "outputs/my_task/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["onpolicy/kl"] == 0.0 for r in rows)
    for r in rows:
        total = r["reward/exact_match/mean"] + 0.5 * r["reward/digits_in_place/mean"]
        assert r["reward/mean"] == pytest.approx(total) and "reward/digits_in_place/std" in r
    assert "exact_match" in out.stdout and "digits_in_place" in out.stdout  # the console line names each reward


def test_recipe_reward_import_error_is_one_line(tmp_path):
    out = _recipe(tmp_path, "--rewards", "[{name: 'no_such_module_q:f'}]")
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and lines == ["error: rewards[0].name: cannot import module 'no_such_module_q' for "
                                             "'no_such_module_q:f': not found on PYTHONPATH or next to the config "
                                             "file"], out.stderr[-3000:]
