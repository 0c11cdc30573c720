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
    name: str | None = _f(None, "environment: a registered name (calculator, guess) or an import path "
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
