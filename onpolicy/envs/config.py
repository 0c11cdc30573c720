"""The `env` config section: which environment runs the rollouts and the limits of a trajectory.

`env.name` null (the default) keeps single-turn rollouts. Otherwise each of a step's prompts x
`sampling.num_generations` trajectories gets its own environment instance; `sampling.max_tokens` bounds one
assistant turn and `env.max_total_tokens` the whole trajectory after the prompt (model and environment tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from onpolicy.config_fields import Section, config_field as _f


@dataclass
class EnvArgs(Section):
    _name: ClassVar[str] = "env"
    name: str | None = _f(None, "environment: a registered name (calculator, guess, tool_methods) or an import path "
                                "'package.module:Class' (on PYTHONPATH or next to the config file); null = "
                                "single-turn rollouts", nonblank=True,
                          allowed="null, a registered environment or 'package.module:Class'")
    kwargs: dict = _f(help="keyword arguments of the environment's constructor", factory=dict)
    max_turns: int = _f(4, "assistant turns per trajectory at most", ge=1)
    max_total_tokens: int = _f(256, "tokens after the prompt per trajectory at most: every assistant turn and "
                                    "every observation (sampling.max_tokens bounds one turn)", ge=1)
    stop: list[str] = _f(help="strings that end an assistant turn (e.g. '</tool_call>'), besides sampling.stop "
                              "and the eos ids; the turn keeps the string", factory=list)
    step_timeout_s: float | None = _f(30.0, "time limit of one reset or step call in seconds (it then ends its "
                                            "trajectory); null = none", gt=0)
    num_workers: int = _f(16, "environment calls running at once (threads)", ge=1)

    def _validate(self):
        self._check(all(self.stop), "stop", "a list of non-empty strings")
        self._check(self.name is not None or not self.kwargs, "kwargs",
                    "empty when env.name is null (there is no environment to construct)")


def check_env_fields(cfg) -> None:
    """Cross-section checks of a run with an environment: what single-turn-only features it cannot use."""
    from onpolicy.config_fields import ConfigError

    if cfg.env.name is None:
        return
    t = cfg.trainer
    if t.eval_every:
        raise ConfigError("trainer.eval_every: got {}; allowed: 0 with env.name set (the held-out evaluation "
                          "samples single-turn answers)".format(t.eval_every))
    if t.sft_warmup_steps:
        raise ConfigError("trainer.sft_warmup_steps: got {}; allowed: 0 with env.name set (the warm-start trains "
                          "single-turn answers)".format(t.sft_warmup_steps))
    if t.loss_agg == "constant":
        raise ConfigError("trainer.loss_agg: 'constant' normalises by sampling.max_tokens, one turn's limit; "
                          "allowed with env.name set: sequence or token")
