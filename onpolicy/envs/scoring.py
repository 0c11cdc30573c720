"""`score_trajectories`: rewards, advantages and the loss mask of a step's multi-turn trajectories.

Reward functions get what TRL gives them for multi-turn rollouts: `prompts` = the opening messages, each
completion = the messages after them (assistant turns and observations, the last assistant turn last), plus the
columns `env_reward` (the sum of the trajectory's step rewards; the reward `env` returns it), `turn_rewards`
(one list per trajectory) and `env_finish` (how it ended), beside the data rows' columns and `completion_ids`
(every token after the prompt, the environment's included). A trajectory an environment error ended stays in
its group's statistics with the rewards it has, and is masked out of the loss; `trainer.overlong_filter`
masks those cut by max_turns or max_total_tokens. Every model token gets its trajectory's advantage.
Left out: per-turn advantages, rewards for environment tokens.
"""
from __future__ import annotations

from onpolicy.envs.base import row_messages
from onpolicy.envs.trajectory import EnvRollout


def score_trajectories(cfg, rows: list[dict], ro: EnvRollout, rewards=None, step: int = 0):
    """-> `onpolicy.trainer.scoring.ScoredBatch` (see the module doc)."""
    from onpolicy.trainer.scoring import score_completions

    prompts, completions = [], []
    for row_index, opening, messages in zip(ro.group_index, ro.prompt_messages, ro.messages):
        prompts.append(opening or row_messages(rows[row_index]))
        completions.append(messages or [{"role": "assistant", "content": ""}])
    extra = {"env_reward": ro.env_rewards, "turn_rewards": [list(r) for r in ro.turn_rewards],
             "env_finish": list(ro.finish_reasons)}
    return score_completions(cfg, rows, ro, prompts, completions, truncated=ro.truncated, extra_columns=extra,
                             excluded=[f == "env_error" for f in ro.finish_reasons], rewards=rewards, step=step)
