"""Config and data mistakes that must fail early with one line naming the field, file or reward."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onpolicy.config import ConfigError, ExperimentConfig, parse_args
from onpolicy.rewards import register_reward
from onpolicy.trainer.rollout import Rollout

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "rloo"])
def test_group_algorithms_need_two_generations(algo):
    with pytest.raises(ConfigError, match=r"sampling\.num_generations: got 1; allowed: an int >= 2 .*" + algo):
        ExperimentConfig(trainer={"algo": algo}, sampling={"num_generations": 1})


def test_zero_steps_refused():
    with pytest.raises(ConfigError, match=r"trainer\.steps: got 0; allowed: an int >= 1"):
        ExperimentConfig(trainer={"steps": 0})


def test_empty_yaml_gives_the_built_in_defaults_and_they_are_valid(tmp_path):
    from onpolicy.build import check_context

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cfg = parse_args(["--config", str(empty)])
    assert cfg.to_dict() == ExperimentConfig().to_dict()
    check_context(cfg)  # the defaults fit the default model's context


def _rollout(n_prompts=2, g=2):
    return Rollout(group_size=g, prompt_ids=[[1]] * (n_prompts * g), completion_ids=[[2, 3]] * (n_prompts * g),
                   sampler_logprobs=[torch.zeros(2)] * (n_prompts * g), texts=["x"] * (n_prompts * g),
                   finish_reasons=["stop"] * (n_prompts * g),
                   group_index=[i for i in range(n_prompts) for _ in range(g)])


@register_reward("test_huge_reward")
def _huge(prompts, completions, **kw):
    return [1e300 if i == 0 else 0.0 for i in range(len(completions))]


@register_reward("test_raising_reward")
def _raising(prompts, completions, **kw):
    raise KeyError("answer")


def test_huge_reward_is_named_not_blamed_on_the_lr():
    from onpolicy.trainer.scoring import score_rollouts

    cfg = ExperimentConfig(rewards=[{"name": "embedded"}, {"name": "test_huge_reward", "weight": 0.5}])
    rows = [{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": "d"}]
    with pytest.raises(ValueError, match=r"reward 'test_huge_reward' returned 1e\+300.*not finite in float32") as e:
        score_rollouts(cfg, rows, _rollout())
    assert "lr" not in str(e.value)


def test_raising_reward_is_named():
    from onpolicy.trainer.scoring import score_rollouts

    cfg = ExperimentConfig(rewards=[{"name": "test_raising_reward"}])
    rows = [{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": "d"}]
    with pytest.raises(ValueError, match=r"reward 'test_raising_reward' raised KeyError: 'answer'"):
        score_rollouts(cfg, rows, _rollout())


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_binary_data_file_names_the_file(tmp_path, suffix):
    from onpolicy.data import load_prompts

    bad = tmp_path / f"garbage{suffix}"
    bad.write_bytes(bytes(range(256)) * 4)
    cfg = ExperimentConfig(data={"dataset": str(bad)})
    with pytest.raises(ValueError, match=rf"data\.dataset: .*garbage\{suffix}") as e:
        load_prompts(cfg.data)
    assert suffix == ".csv" or "is not UTF-8 text" in str(e.value)


def test_empty_data_folder_names_the_folder(tmp_path):
    from onpolicy.data import load_prompts

    folder = tmp_path / "nothing_here"
    folder.mkdir()
    cfg = ExperimentConfig(data={"dataset": str(folder)})
    with pytest.raises(ValueError, match=r"data\.dataset: .*nothing_here.* holds no data files"):
        load_prompts(cfg.data)


def test_empty_prompt_row_is_refused_at_load_naming_the_file_and_row(tmp_path):
    from onpolicy.data import load_prompts
    from onpolicy.model.tiny import CharTokenizer

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "12=", "answer": "21"}\n{"prompt": "", "answer": "x"}\n')
    cfg = ExperimentConfig(data={"dataset": str(path)})
    with pytest.raises(ValueError, match=r"data\.prompt_column: row 1 \(0-based\) of .*p\.jsonl.* is empty"):
        load_prompts(cfg.data, CharTokenizer())


@pytest.mark.parametrize("args, message", [
    (["--rewards", "[{name: no_such_reward}]"], "rewards[0].name: unknown reward name 'no_such_reward'"),
    (["--data.dataset", "/nonexistent/data.jsonl"], "data.dataset: '/nonexistent/data.jsonl' does not exist"),
])
def test_print_config_checks_rewards_and_data_paths(args, message):
    res = subprocess.run([sys.executable, str(ROOT / "recipes/grpo.py"), *args, "--print-config"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {message}" or message in res.stderr, res.stderr
    assert res.returncode == 2 and "Traceback" not in res.stderr
