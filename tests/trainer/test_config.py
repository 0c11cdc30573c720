"""onpolicy.config: YAML + CLI overrides, coercion, validation errors naming the dotted field."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onpolicy.config import (SECTIONS, ConfigError, ExperimentConfig, RewardArgs, TrainerArgs,
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


@pytest.mark.parametrize("algo, epsilon_high, loss_agg", [
    ("grpo", 0.2, "sequence"), ("dr_grpo", 0.2, "constant"), ("dapo", 0.28, "token"), ("rloo", 0.2, "sequence"),
])
def test_algo_defaults(algo, epsilon_high, loss_agg):
    """null fields resolve to the documented per-algorithm values (literal here, not read back from the table);
    given values win; a recipe's fixed algo resolves the defaults after the override."""
    t = TrainerArgs(algo=algo)
    assert (t.epsilon_high, t.loss_agg) == (epsilon_high, loss_agg)
    assert parse_args(["--trainer.algo", algo, "--trainer.epsilon_high", "null"]).trainer.epsilon_high == epsilon_high
    given = TrainerArgs(algo=algo, epsilon_high=0.5, loss_agg="token")
    assert (given.epsilon_high, given.loss_agg) == (0.5, "token")
    assert parse_args([], forced={"trainer.algo": algo}).trainer.loss_agg == loss_agg


@pytest.mark.parametrize("argv, field, allowed", [
    (["--trainer.lr", "-1"], "trainer.lr", "> 0"),
    (["--trainer.lr", "fast"], "trainer.lr", "float"),
    (["--trainer.algo", "ppo"], "trainer.algo", "grpo, dr_grpo, dapo, rloo"),
    (["--sampling.num_generations", "0"], "sampling.num_generations", ">= 1"),
    (["--sampling.top_p", "0"], "sampling.top_p", "(0, 1]"),
    (["--sampling.top_p", "1.5"], "sampling.top_p", "(0, 1]"),
    (["--sampling.top_k", "0"], "sampling.top_k", "-1"),
    (["--sampling.temperature", "0"], "sampling.temperature", ">= 0.01"),
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
    (["--data.chat_template_kwargs", "{tokenize: true}"], "data.chat_template_kwargs", "template variable names"),
    (["--data.chat_template_kwargs", "[1]"], "data.chat_template_kwargs", "mapping"),
    (["--sampling.stop_token_ids", "[3, -1]"], "sampling.stop_token_ids", ">= 0"),
    (["--data.dataset", "embedded:"], "data.dataset", "task name"),
    (["--engine.block_size", "0"], "engine.block_size", ">= 1"),
    (["--trainer.nope", "1"], "--trainer.nope", "the fields of trainer: algo, steps"),
    (["--nope.x", "1"], "--nope.x", "model, data"),
    (["--trainer", "1"], "--trainer", "the fields of trainer: algo, steps"),
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


def test_config_imports_nothing_from_the_trainer():
    """onpolicy.config and its modules stand alone: importing them loads no onpolicy.trainer module."""
    code = ("import sys, onpolicy.config; bad = sorted(m for m in sys.modules if m.startswith('onpolicy.trainer')); "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_check_context_before_any_model_is_built(tmp_path, monkeypatch):
    """The context budget and the model path are checked from config.json alone (no weights read)."""
    from onpolicy.build import check_context

    check_context(parse_args(["--config", str(ROOT / "configs/tiny-cpu.yaml")]))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "max_position_embeddings": 100}))
    ok = parse_args(["--model.path", str(model_dir), "--data.max_prompt_tokens", "90", "--sampling.max_tokens", "10"])
    check_context(ok)
    with pytest.raises(ConfigError, match=r"= 101 exceeds the model's context max_position_embeddings=100"):
        check_context(parse_args(["--model.path", str(model_dir), "--data.max_prompt_tokens", "91",
                                  "--sampling.max_tokens", "10"]))
    with pytest.raises(ConfigError, match=r"^model.tiny: overrides only apply with model.path: tiny"):
        check_context(parse_args(["--model.path", str(model_dir), "--model.tiny", "{num_hidden_layers: 1}"]))
    with pytest.raises(ConfigError, match=r"^model.path: .* has no config.json"):
        check_context(parse_args(["--model.path", str(tmp_path)]))


@pytest.mark.parametrize("argv, message", [
    (["--engine.kv_cache_memory_fraction", "0"],
     "engine.kv_cache_memory_fraction: got 0.0; allowed: a float in (0, 1]"),
    (["--engine.num_blocks", "0"], "engine.num_blocks: got 0; allowed: null or an int >= 1"),
    (["--trainer.epsilon_low", "1"], "trainer.epsilon_low: got 1.0; allowed: a float in [0, 1)"),
    (["--data.prompt_column", " "], "data.prompt_column: got ' '; allowed: a non-blank string"),
    (["--model.path", ""], "model.path: got ''; allowed: 'tiny' or a model directory"),
    (["--trainer.epsilon_high", "-0.1"], "trainer.epsilon_high: got -0.1; allowed: null or a float >= 0"),
    (["--sampling.top_k", "-2"], "sampling.top_k: got -2; allowed: -1 (off) or an int >= 1"),
])
def test_declared_bounds_messages(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert str(e.value) == message


def test_engine_section_is_the_engines_config():
    """One definition: the config's engine section is what `LLM` takes; no invariant switch of its own."""
    from onpolicy.engine import EngineConfig

    cfg = parse_args(["--engine.block_size", "8", "--engine.kv_cache_memory_fraction", "0.25"])
    assert type(cfg.engine) is EngineConfig and cfg.engine == EngineConfig(block_size=8, kv_cache_memory_fraction=0.25)
    assert "invariant" not in {f.name for f in dataclasses.fields(EngineConfig)}
    cfg.engine.block_size = 0  # a later assignment is caught when the engine validates again
    with pytest.raises(ConfigError, match=r"^engine.block_size: got 0; allowed: an int >= 1"):
        cfg.engine.validate()
