"""Naming an environment (registered name or import path), its constructor arguments, the `env` config section,
and the checks on what reset/step return: one-line errors naming the field."""
import pytest

from onpolicy.config_fields import ConfigError
from onpolicy.envs import StepResult, Turn, available_envs, register_env, resolve_env
from onpolicy.envs.base import EnvError, checked_messages, checked_step
from onpolicy.envs.config import EnvArgs


def test_builtins_and_import_paths(tmp_path):
    assert {"calculator", "guess"} <= set(available_envs())
    env = resolve_env(EnvArgs(name="calculator", kwargs={"system_prompt": "s"}))()
    assert env.system_prompt == "s"
    (tmp_path / "my_envs.py").write_text("class Echo:\n    def __init__(self, word='hi'):\n        self.word = word\n"
                                         "    def reset(self, row):\n        return 'go'\n"
                                         "    def step(self, turn):\n        return self.word, 1, True\n")
    make = resolve_env(EnvArgs(name="my_envs:Echo", kwargs={"word": "yo"}), config_dir=str(tmp_path))
    assert make().step(Turn("x", [1], "stop", 0)) == ("yo", 1, True)


@pytest.mark.parametrize("args, message", [
    ({"name": "nope"}, "env.name: unknown environment 'nope'; allowed: a registered name (calculator, "),
    ({"name": "no_such_module:Env"}, "env.name: cannot import module 'no_such_module'"),
    ({"name": "os:path"}, "env.name: 'os:path' is not an environment; allowed: a class with reset(row) and step"),
    ({"name": "a:b:c"}, "env.name: 'a:b:c' is not an import path; allowed: 'package.module:Class'"),
    ({"name": "calculator", "kwargs": {"colour": 1}}, "env.kwargs: got an unexpected keyword argument 'colour'"),
])
def test_bad_names_and_kwargs(args, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve_env(EnvArgs(**args))


@pytest.mark.parametrize("args, message", [
    ({"max_turns": 0}, "env.max_turns"), ({"stop": [""]}, "env.stop"), ({"step_timeout_s": 0}, "env.step_timeout_s"),
    ({"kwargs": {"a": 1}}, "env.kwargs: .*empty when env.name is null"), ({"num_workers": 0}, "env.num_workers"),
])
def test_config_section_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        EnvArgs(**args)


def test_register_env_refuses_a_second_owner():
    @register_env("test_env_interface_one")
    class A:
        reset = step = None

    with pytest.raises(ValueError, match="already taken"):
        register_env("test_env_interface_one")(type("B", (), {}))


def test_step_results_and_messages_are_checked():
    assert checked_step(StepResult("more", None, False)) == ([{"role": "user", "content": "more"}], 0.0, False)
    assert checked_step(({"role": "tool", "content": "4"}, 1, True)).messages == [{"role": "tool", "content": "4"}]
    for bad, message in [((1, 2), "must return"), (([], "1", True), "reward '1'"), (([], 0, 1), "done 1"),
                         (([{"role": "user"}], 0, False), r"messages\[0\] must be a dict")]:
        with pytest.raises(EnvError, match=message):
            checked_step(bad)
    with pytest.raises(EnvError, match="reset messages must be a list"):
        checked_messages(3, "reset messages")


def test_turn_is_its_text_with_the_token_ids():
    turn = Turn("12\n", [5, 6, 7], "stop", 2)
    assert turn == "12\n" and turn.strip() == "12" and turn.token_ids == (5, 6, 7)
    assert (turn.finish_reason, turn.index) == ("stop", 2)


def test_run_start_checks_template_and_stop_strings(chat_tokenizer):
    from onpolicy.config import ExperimentConfig
    from onpolicy.envs.source import with_env_rollouts
    from onpolicy.trainer import TrainerParts
    from tests.envs.conftest import IM_SPECIALS

    cfg = ExperimentConfig.from_dict({"env": {"name": "guess", "stop": ["x<|im_end|>"]}, "rewards": [{"name": "env"}]})
    tok = chat_tokenizer(110, IM_SPECIALS, eos="<|im_end|>")
    with pytest.raises(ValueError, match=r"env.stop: 'x<\|im_end\|>' contains the special token"):
        with_env_rollouts(cfg, tok, TrainerParts())
    cfg.env.stop = ["</tool_call>"]
    assert with_env_rollouts(cfg, tok, TrainerParts()).rollouts != TrainerParts().rollouts
    tok.chat_template = None
    with pytest.raises(ValueError, match="env: multi-turn rollouts need a tokenizer with a chat template"):
        with_env_rollouts(cfg, tok, TrainerParts())
