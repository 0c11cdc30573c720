"""Rewards from outside the package: import paths (PYTHONPATH or beside the config), Python callables through
`onpolicy.train(reward_funcs=...)`, TRL's keyword arguments and None values, per-reward metrics."""
import json
import sys
import uuid

import pytest
import torch

from onpolicy.config import ConfigError, RewardArgs, parse_args
from onpolicy.rewards import combine_rewards
from onpolicy.rewards.sources import resolve_rewards

MODULE = '''
CALLS = []

def exact_match(prompts, completions, answer, **kwargs):
    CALLS.append(sorted(kwargs))
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

class Scorer:
    def __call__(self, prompts, completions, **kwargs):
        return [0.5] * len(completions)

scorer = Scorer()
NOT_CALLABLE = 3
'''


def _module(tmp_path, body=MODULE):
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"  # fresh per test: sys.modules keeps imported modules
    (tmp_path / f"{name}.py").write_text(body)
    return name


def _config(tmp_path, rewards):
    path = tmp_path / "exp.yaml"
    path.write_text("rewards:\n" + "".join(f"  - {r}\n" for r in rewards))
    return str(path)


def test_import_path_found_next_to_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    mod = _module(tmp_path)
    before = list(sys.path)
    cfg = parse_args(["--config", _config(tmp_path, [f"{{name: '{mod}:exact_match', weight: 2.0}}", "{name: format}"])])
    assert sys.path == before  # the config's directory was searched for this lookup only
    rewards = resolve_rewards(cfg.rewards)  # imported once: resolves again without the directory
    assert [(r.label, r.weight) for r in rewards] == [("exact_match", 2.0), ("format", 1.0)]
    assert rewards[0].fn is sys.modules[mod].exact_match
    total, per = combine_rewards(cfg.rewards, ["q", "q"], ["7", "#### 7"], answer=["7", "7"])
    assert per == {"exact_match": [1.0, 0.0], "format": [0.0, 1.0]} and total == [2.0, 1.0]


def test_import_path_on_pythonpath_and_callable_objects(tmp_path, monkeypatch):
    mod = _module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = resolve_rewards([RewardArgs(f"{mod}:scorer"), RewardArgs(f"{mod}:Scorer.__call__", 0.0)])
    assert [r.label for r in rewards] == ["scorer", "__call__"]
    assert rewards[0].fn(["p"], ["c"]) == [0.5]


@pytest.mark.parametrize("name, message", [
    ("nope_module_xyz:f", "rewards[0].name: cannot import module 'nope_module_xyz' for 'nope_module_xyz:f': not "
                          "found on PYTHONPATH or next to the config file"),
    ("{mod}:missing", "rewards[0].name: module '{mod}' ({path}) has no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", "rewards[0].name: '{mod}:NOT_CALLABLE' is a int, not a callable"),
    ("{mod}:a:b", "rewards[0].name: '{mod}:a:b' is not an import path; allowed: 'package.module:function'"),
    ("no_such_reward", "rewards[0].name: unknown reward name 'no_such_reward'; allowed: a registered name ("),
    ("{broken}:f", "rewards[0].name: importing '{broken}' for '{broken}:f' raised ZeroDivisionError"),
    ("{needs}:f", "rewards[0].name: importing '{needs}' for '{needs}:f' failed: No module named 'not_installed_x'"),
])
def test_bad_reward_is_one_line_at_config_time(tmp_path, name, message, capsys):
    mod, broken = _module(tmp_path), _module(tmp_path, "1 / 0\n")
    needs = _module(tmp_path, "import not_installed_x\n")
    fill = dict(mod=mod, broken=broken, needs=needs, path=tmp_path / f"{mod}.py")
    with pytest.raises(ConfigError) as e:  # --print-config too: the rewards resolve before anything is printed
        parse_args(["--config", _config(tmp_path, [f"{{name: '{name.format(**fill)}'}}"]), "--print-config"])
    assert str(e.value).startswith(message.format(**fill)) and "\n" not in str(e.value), str(e.value)
    assert capsys.readouterr().out == ""


def test_reward_entry_needs_name_or_model(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"rewards\[1\].name: got None; allowed: exactly one of name"):
        parse_args(["--rewards", "[{name: format}, {weight: 1.0}]"])
    with pytest.raises(ConfigError, match=r"rewards\[0\].name: got 'format'; allowed: exactly one of name"):
        parse_args(["--rewards", "[{name: format, model: /x}]"])
    mod = _module(tmp_path, "def format(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^rewards: rewards\[0\] and rewards\[1\] both log as reward/format"):
        resolve_rewards([RewardArgs("format"), RewardArgs(f"{mod}:format")])


def test_trl_keyword_arguments_and_none_values():
    """Each function gets prompts, completions (passed through as given, e.g. message lists), completion_ids,
    trainer_state and the data columns; None = does not apply: the total sums the rewards that apply."""
    seen = {}

    def only_long(prompts, completions, completion_ids, trainer_state, answer, **kwargs):
        seen.update(completions=completions, ids=completion_ids, state=trainer_state, answer=answer, rest=kwargs)
        return [None if len(ids) < 2 else 1.0 for ids in completion_ids]

    def always(prompts, completions, **kwargs):
        return [0.25] * len(completions)

    chat = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "bc"}]]
    rewards = [RewardArgs("only_long", 2.0), RewardArgs("always", 1.0)]
    callables = {"only_long": only_long, "always": always}
    total, per = combine_rewards(resolve_rewards(rewards, callables=callables), ["p", "p"], chat,
                                 completion_ids=[[5], [6, 7]], trainer_state="state", answer=["x", "y"])
    assert seen == dict(completions=chat, ids=[[5], [6, 7]], state="state", answer=["x", "y"], rest={})
    assert per == {"only_long": [None, 1.0], "always": [0.25, 0.25]} and total == [0.25, 2.25]
    with pytest.raises(ValueError, match="every reward returned None for completion 0"):
        combine_rewards(resolve_rewards(rewards[:1], callables=callables), ["p", "p"], chat,
                        completion_ids=[[5], [6, 7]], trainer_state="s", answer=["x", "y"])


def test_per_reward_metrics_beside_the_total():
    from onpolicy.trainer.rollout import Rollout
    from onpolicy.trainer.scoring import ScoredBatch

    ro = Rollout(group_size=2, completion_ids=[[1], [2], [3], [4]])
    scored = ScoredBatch(rollout=ro, rewards=torch.tensor([1.0, 0.0, 2.0, 1.0]), advantages=torch.zeros(4),
                         loss_mask=torch.ones(4, dtype=torch.bool), truncated=torch.zeros(4, dtype=torch.bool),
                         kept_groups=2, reward_by_name={"exact": [1.0, 0.0, 1.0, 1.0], "judge": [None, None, 2.0, 0.0]})
    m = scored.metrics()
    assert m["reward/mean"] == 1.0 and m["reward/exact/mean"] == 0.75 and m["reward/judge/mean"] == 1.0
    assert m["reward/exact/std"] == pytest.approx(0.4330127) and m["reward/judge/std"] == 1.0
    from onpolicy.samples import sample_rows

    ro.texts, ro.group_index, ro.finish_reasons = ["a", "b", "c", "d"], [0, 0, 1, 1], ["stop"] * 4
    rows = sample_rows(1, ["p0", "p1"], scored)  # samples.jsonl: None where a reward does not apply
    assert [r["rewards"] for r in rows][:2] == [{"exact": 1.0, "judge": None}, {"exact": 0.0, "judge": None}]
    scored.reward_by_name = {"judge": [None] * 4}  # applies to nothing this step: no metric rather than NaN
    assert not any(k.startswith("reward/judge") for k in scored.metrics())


def test_python_entry_point_callable_drives_the_advantages(tmp_path):
    """`onpolicy.train(cfg, reward_funcs=[fn], reward_weights=[w])` scores with the callable (TRL's keyword
    arguments included), its weighted values become the step's rewards and advantages, and metrics.jsonl logs
    reward/<name>/mean beside reward/mean; the saved config names the callable."""
    import yaml

    import onpolicy
    from onpolicy.trainer import TrainerParts, score_rollouts
    from onpolicy.trainer.advantages import group_advantages

    calls, scored = [], []

    def digit_count(prompts, completions, completion_ids, trainer_state, answer, **kwargs):
        calls.append((len(completions), trainer_state.global_step, trainer_state.max_steps))
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]

    def kept(*a, **k):
        scored.append(score_rollouts(*a, **k))
        return scored[-1]

    out = tmp_path / "run"
    cfg = {"model": {"path": "tiny", "device": "cpu"},
           "data": {"dataset": "embedded:reverse", "num_examples": 8, "max_prompt_tokens": 16},
           "sampling": {"num_generations": 4, "max_tokens": 4},
           "trainer": {"steps": 1, "prompts_per_step": 2, "lr": 1e-3},
           "logging": {"output_dir": str(out), "plot": False}}
    onpolicy.train(cfg, reward_funcs=[digit_count], reward_weights=[0.5], log=lambda *a: None,
                   parts=TrainerParts(score_fn=kept))
    assert calls == [(8, 0, 1)]
    batch = scored[0]
    values = [float(sum(ch.isdigit() for ch in t)) for t in batch.rollout.texts]
    assert batch.reward_by_name == {"digit_count": values}
    assert batch.rewards.tolist() == [0.5 * v for v in values]
    assert torch.equal(batch.advantages, group_advantages(batch.rewards, 4, "grpo"))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["reward/digit_count/mean"] == sum(values) / len(values) and row["reward/mean"] == sum(values) / 16
    assert yaml.safe_load((out / "config.yaml").read_text())["rewards"] == [{"name": "digit_count", "weight": 0.5}]


def test_entry_point_arguments():
    from onpolicy.api import reward_entries

    def f(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    entries, callables = reward_entries([f, "format", combine_rewards], [1.0, 0.5, 2.0])
    assert entries == [{"name": "f", "weight": 1.0}, {"name": "format", "weight": 0.5},
                       {"name": "onpolicy.rewards.registry:combine_rewards", "weight": 2.0}]
    assert callables == {"f": f, "onpolicy.rewards.registry:combine_rewards": combine_rewards}
    with pytest.raises(ValueError, match="reward_weights: got 1 weights for 2 reward_funcs"):
        reward_entries([f, "format"], [1.0])
    with pytest.raises(ValueError, match=r"reward_funcs\[0\]: got a int"):
        reward_entries([3])


def test_entry_point_reads_a_yaml_and_its_directory(tmp_path, monkeypatch):
    """`onpolicy.train("dir/exp.yaml")`: import-path rewards are found next to the YAML, as on the command line;
    a bad config is a one-line error before any compute."""
    from onpolicy.api import as_config, train

    monkeypatch.chdir("/")
    mod = _module(tmp_path)
    path = _config(tmp_path, [f"{{name: '{mod}:exact_match'}}"])
    cfg, config_dir = as_config(path)
    assert config_dir == str(tmp_path) and [r.name for r in cfg.rewards] == [f"{mod}:exact_match"]
    assert resolve_rewards(cfg.rewards, config_dir)[0].fn is sys.modules[mod].exact_match
    with pytest.raises(ConfigError, match=r"^rewards\[0\].name: unknown reward name 'nope'"):
        train(path, reward_funcs=["nope"])
    with pytest.raises(ValueError, match="reward_weights: given without reward_funcs"):
        train(path, reward_weights=[1.0])


def test_entry_point_keeps_a_config_object():
    from onpolicy.api import as_config
    from onpolicy.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict({"trainer": {"algo": "dapo"}})
    assert as_config(cfg) == (cfg, None)
    replaced, _ = as_config(cfg, [{"name": "format", "weight": 0.5}])
    assert replaced.rewards == [RewardArgs("format", 0.5)] and replaced.trainer is cfg.trainer
    assert cfg.rewards == [RewardArgs("embedded", 1.0)]


def test_a_failing_reward_is_named():
    def judge(prompts, completions, **kwargs):
        raise KeyError("score")

    with pytest.raises(ValueError, match=r"^reward 'judge' raised KeyError: 'score'$"):
        combine_rewards(resolve_rewards([RewardArgs("judge")], callables={"judge": judge}), ["p"], ["c"])
