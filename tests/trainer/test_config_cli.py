"""The command line as a user meets it: dict-field overrides, "did you mean", bare flags, the usage line, and
trainer.strict_onpolicy following trainer.invariant."""
from pathlib import Path

import pytest

from onpolicy.config import ConfigError, parse_args
from onpolicy.config_cli import program_name

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-cpu.yaml")


def test_dotted_override_merges_into_a_dict_field():
    cfg = parse_args(["--config", TINY, "--model.tiny.hidden_size", "64"])
    assert cfg.model.tiny["hidden_size"] == 64
    assert cfg.model.tiny["num_hidden_layers"] == 2  # the rest of the YAML's tiny block is kept
    cfg = parse_args(["--model.tiny.num_hidden_layers=1", "--model.tiny.head_dim", "32"])
    assert cfg.model.tiny == {"num_hidden_layers": 1, "head_dim": 32}


def test_dotted_override_into_a_non_dict_field_is_refused():
    with pytest.raises(ConfigError, match=r"--trainer\.lr\.x: trainer\.lr is not a mapping"):
        parse_args(["--trainer.lr.x", "1"])


@pytest.mark.parametrize("argv, suggestion", [
    (["--trainer.lrr", "1e-4"], "did you mean --trainer.lr?"),
    (["--trainer.temperature", "0.5"], "did you mean --sampling.temperature?"),
    (["--trainr.lr", "1e-4"], "unknown section 'trainr'; did you mean trainer?"),
    (["--sampling.num_generation", "4"], "did you mean --sampling.num_generations?"),
])
def test_typo_gets_did_you_mean_not_a_field_list(argv, suggestion):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    message = str(e.value)
    assert suggestion in message
    assert "prompts_per_step" not in message and "\n" not in message


def test_unknown_field_without_a_close_match_lists_the_section():
    with pytest.raises(ConfigError, match=r"--logging\.zzzz: unknown field; the fields of logging: output_dir"):
        parse_args(["--logging.zzzz", "1"])


@pytest.mark.parametrize("argv, message", [
    (["--trainer.lr"], "--trainer.lr needs a value (a float > 0)"),
    (["--trainer.steps", "--trainer.lr", "1e-4"], "--trainer.steps needs a value (an int >= 1)"),
    (["--model.path"], "--model.path needs a value"),
])
def test_a_missing_value_says_so(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert str(e.value).startswith(message), str(e.value)


def test_bare_bool_flag_still_means_true():
    assert parse_args(["--trainer.activation_checkpointing"]).trainer.activation_checkpointing is True
    assert parse_args(["--trainer.resume"]).trainer.resume is True  # bool | str


def test_usage_line_names_the_program(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["recipes/grpo.py", "--help"])
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert capsys.readouterr().out.startswith("usage: python recipes/grpo.py [--config FILE.yaml]")
    assert program_name("/usr/bin/onpolicy-grpo") == "onpolicy-grpo"


def test_strict_onpolicy_follows_invariant():
    assert parse_args([]).trainer.strict_onpolicy is True
    assert parse_args(["--trainer.invariant", "false"]).trainer.strict_onpolicy is False
    assert parse_args(["--config", TINY, "--trainer.invariant", "false"]).trainer.strict_onpolicy is False
    assert parse_args(["--trainer.strict_onpolicy", "false"]).trainer.strict_onpolicy is False
    with pytest.raises(ConfigError) as e:
        parse_args(["--trainer.invariant", "false", "--trainer.strict_onpolicy", "true"])
    assert "trainer.strict_onpolicy" in str(e.value) and "trainer.invariant is false" in str(e.value)
