"""onpolicy.config: YAML + CLI overrides, coercion, validation errors naming the dotted field."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onpolicy.config import (ALGO_DEFAULTS, SECTIONS, ConfigError, ExperimentConfig, RewardArgs, TrainerArgs,
                             parse_args)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_schema():
    cfg = ExperimentConfig()
    assert cfg.model.path == "tiny" and cfg.data.dataset == "embedded:arith"
    assert cfg.sampling.num_generations == 8 and cfg.trainer.lr == 1e-5 and cfg.trainer.adam_betas == [0.9, 0.99]
    assert [r.name for r in cfg.rewards] == ["embedded"] and cfg.logging.report_to == ["console"]
    for cls in SECTIONS.values():  # every field documents itself
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls


def test_yaml_then_cli_overrides(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("trainer:\n  lr: 1e-5\n  steps: 3\nsampling:\n  stop: [x]\nrewards:\n  - name: format\n")
    cfg = parse_args(["--config", str(p), "--trainer.lr", "1e-6", "--sampling.top_p=0.5",
                      "--trainer.strict_onpolicy", "--sampling.stop", "[a, b]", "--engine.use_cuda_graphs", "false",
                      "--data.num_examples", "null", "--trainer.adam_betas=[0.8,0.9]"])
    assert cfg.trainer.lr == 1e-6 and isinstance(cfg.trainer.lr, float)  # '1e-6' is a str to PyYAML
    assert cfg.trainer.steps == 3 and cfg.sampling.top_p == 0.5 and cfg.trainer.strict_onpolicy is True
    assert cfg.sampling.stop == ["a", "b"] and cfg.engine.use_cuda_graphs is False
    assert cfg.data.num_examples is None and cfg.trainer.adam_betas == [0.8, 0.9]
    assert [r.name for r in cfg.rewards] == ["format"]
    cfg2 = parse_args(["--rewards", "[{name: math_answer}, {name: format, weight: 0.1}]"])
    assert cfg2.rewards == [RewardArgs("math_answer", 1.0), RewardArgs("format", 0.1)]


def test_cli_strings_stay_strings():
    cfg = parse_args(["--data.dataset", "data/a: b.jsonl", "--logging.run_name", "null", "--model.path=yes",
                      "--data.prompt_column", "123"])
    assert cfg.data.dataset == "data/a: b.jsonl" and cfg.logging.run_name is None
    assert cfg.model.path == "yes" and cfg.data.prompt_column == "123"


def test_round_trip_to_dict():
    cfg = parse_args(["--trainer.algo", "dapo", "--logging.report_to", "[console, wandb]"])
    d = cfg.to_dict()
    assert d["trainer"]["algo"] == "dapo" and d["rewards"] == [{"name": "embedded", "weight": 1.0}]
    assert ExperimentConfig.from_dict(d) == cfg
    assert ExperimentConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("algo", sorted(ALGO_DEFAULTS))
def test_algo_defaults(algo):
    t = TrainerArgs(algo=algo)
    assert t.epsilon_high == ALGO_DEFAULTS[algo]["epsilon_high"] and t.loss_agg == ALGO_DEFAULTS[algo]["loss_agg"]
    assert TrainerArgs(algo=algo, epsilon_high=0.5, loss_agg="token").epsilon_high == 0.5
    losses = pytest.importorskip("onpolicy.trainer.losses")
    assert t.loss_agg == losses.default_loss_agg(algo)  # the trainer's own default agrees


@pytest.mark.parametrize("argv, field, allowed", [
    (["--trainer.lr", "-1"], "trainer.lr", "> 0"),
    (["--trainer.lr", "fast"], "trainer.lr", "float"),
    (["--trainer.algo", "ppo"], "trainer.algo", "grpo, dr_grpo, dapo, rloo"),
    (["--sampling.num_generations", "0"], "sampling.num_generations", ">= 1"),
    (["--sampling.top_p", "0"], "sampling.top_p", "(0, 1]"),
    (["--sampling.top_p", "1.5"], "sampling.top_p", "(0, 1]"),
    (["--sampling.top_k", "0"], "sampling.top_k", "-1"),
    (["--sampling.temperature", "0"], "sampling.temperature", "> 0"),
    (["--trainer.tis_cap", "2.0"], "trainer.tis_cap", "invariant"),
    (["--trainer.invariant", "false", "--trainer.strict_onpolicy", "true"], "trainer.strict_onpolicy", "invariant"),
    (["--trainer.steps", "1.5"], "trainer.steps", "int"),
    (["--trainer.invariant", "maybe"], "trainer.invariant", "bool"),
    (["--trainer.adam_betas", "[0.9]"], "trainer.adam_betas", "two floats"),
    (["--trainer.loss_agg", "mean"], "trainer.loss_agg", "sequence, token, constant"),
    (["--model.dtype", "float16"], "model.dtype", "float32, bfloat16"),
    (["--model.device", "tpu"], "model.device", "auto, cpu, cuda"),
    (["--logging.report_to", "[console, tensorboard]"], "logging.report_to", "console, wandb"),
    (["--logging.log_every", "0"], "logging.log_every", ">= 1"),
    (["--data.system_prompt", "hi"], "data.system_prompt", "chat_template"),
    (["--data.dataset", "embedded:"], "data.dataset", "task name"),
    (["--engine.block_size", "0"], "engine.block_size", ">= 1"),
    (["--trainer.nope", "1"], "--trainer.nope", "--trainer.lr"),
    (["--nope.x", "1"], "--nope.x", "model, data"),
    (["--trainer", "1"], "--trainer", "--trainer.lr"),
    (["--rewards", "[{name: a}, {nam: b}]"], "rewards[1]", "name, weight"),
    (["--rewards", "[{name: a}, {name: a}]"], "rewards", "each name once"),
    (["--rewards", "[]"], "rewards", "non-empty"),
    (["trainer.lr=1"], "unexpected argument 'trainer.lr=1'", "--section.field"),
])
def test_bad_values_raise_config_error(argv, field, allowed):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    msg = str(e.value)
    assert msg.startswith(field) and allowed in msg, msg
    assert isinstance(e.value, ValueError)


def test_bad_yaml(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("trainer:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"trainer: unknown key\(s\) \['lrr'\]; allowed: algo"):
        parse_args(["--config", str(p)])
    p.write_text("optim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['optim'\]"):
        parse_args(["--config", str(p)])
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parse_args(["--config", str(p)])
    with pytest.raises(ConfigError, match="file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_forced_keys():
    assert parse_args([], forced={"trainer.algo": "dapo"}).trainer.epsilon_high == 0.28
    assert parse_args(["--trainer.algo", "dapo"], forced={"trainer.algo": "dapo"}).trainer.algo == "dapo"
    with pytest.raises(ConfigError, match="this recipe fixes trainer.algo"):
        parse_args(["--trainer.algo", "grpo"], forced={"trainer.algo": "dapo"})


def test_resume_bool_or_path():
    assert parse_args(["--trainer.resume", "true"]).trainer.resume is True
    assert parse_args(["--trainer.resume", "runs/x/checkpoints"]).trainer.resume == "runs/x/checkpoints"
    assert parse_args([]).trainer.resume is False


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = parse_args(["--config", str(path)])
        assert cfg.rewards, path
    gsm = parse_args(["--config", str(ROOT / "configs/qwen3-0.6b-gsm8k.yaml")])
    assert gsm.model.dtype == "bfloat16" and [r.name for r in gsm.rewards] == ["math_answer", "format"]
    dapo = parse_args(["--config", str(ROOT / "configs/dapo-tiny.yaml")])
    assert dapo.trainer.algo == "dapo" and dapo.trainer.dynamic_sampling


def test_accelerate_launch_recipe(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu.yaml recipes/dapo.py ...` runs the recipe to the
    end (0 RL steps: parse, determinism, rewards check, Accelerator, model/data/engine build, logger)."""
    pytest.importorskip("accelerate")
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"), "--num_cpu_threads_per_process", "2",
           str(ROOT / "recipes/dapo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"),
           "--trainer.steps", "0", "--trainer.lr=3e-4", "--data.num_examples", "8",
           "--logging.output_dir", str(out_dir), "--logging.report_to", "[console]"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["trainer"]["algo"] == "dapo" and saved["trainer"]["lr"] == 3e-4 and saved["model"]["device"] == "cpu"
    assert saved["trainer"]["epsilon_high"] == 0.28  # dapo's default, resolved after the recipe fixed the algo


@pytest.mark.gpu
def test_accelerate_launch_single_gpu_one_step(tmp_path):
    """On the H100: the recipe under configs/accelerate/single_gpu.yaml places the tiny model on CUDA and runs
    one RL step with KL exactly 0."""
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "configs/accelerate/single_gpu.yaml"), str(ROOT / "recipes/grpo.py"),
           "--config", str(ROOT / "configs/tiny-cpu.yaml"), "--model.device", "auto", "--trainer.steps", "1",
           "--trainer.prompts_per_step", "2", "--sampling.num_generations", "2", "--data.num_examples", "8",
           "--trainer.sft_warmup_steps", "0", "--logging.output_dir", str(out_dir), "--logging.plot", "false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert yaml.safe_load((out_dir / "config.yaml").read_text())["model"]["device"] == "cuda"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["onpolicy/kl"] == 0.0 and rows[0]["onpolicy/mismatch_frac"] == 0.0


def test_print_config(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--trainer.lr=3e-4", "--print-config"], forced={"trainer.algo": "rloo"})
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["lr"] == 3e-4 and printed["trainer"]["algo"] == "rloo"


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{name}.{f.name}" in text
    assert "AdamW learning rate" in text


def test_modules_import_without_optional_packages():
    """config, data, rewards, logging, checkpoint must not pull in datasets / wandb / trl / matplotlib at import."""
    code = ("import sys, onpolicy.config, onpolicy.data, onpolicy.rewards, onpolicy.logging, "
            "onpolicy.trainer.checkpoint; bad = {'datasets', 'wandb', 'trl', 'matplotlib'} & set(sys.modules); "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
