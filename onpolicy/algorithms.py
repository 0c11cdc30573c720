"""What each RL algorithm is: its advantage estimator and loss defaults. One table that the config (for
`trainer.algo` choices and algorithm-dependent defaults) and the trainer (advantages, losses) both import.

    grpo     group advantage (r - mean) / (std + eps), sequence-mean loss, clip 0.2 / 0.2
    dr_grpo  group advantage r - mean (no std), constant normaliser (completions * max_tokens), clip 0.2 / 0.2
    dapo     as grpo, token-level loss, clip-higher 0.2 / 0.28
    rloo     leave-one-out baseline r - mean(others), sequence-mean loss, clip 0.2 / 0.2

Every one estimates advantages within a prompt's group of completions, so each needs a group of at least
`MIN_GENERATIONS[algo]` (a group of one has advantage 0: nothing is learned; rloo has no "others").
"""
from __future__ import annotations

ALGOS = ("grpo", "dr_grpo", "dapo", "rloo")
LOSS_AGGS = ("sequence", "token", "constant")
# Defaults that depend on the algorithm (applied when the config leaves the field null).
ALGO_DEFAULTS = {
    "grpo": {"epsilon_high": 0.2, "loss_agg": "sequence"},
    "dr_grpo": {"epsilon_high": 0.2, "loss_agg": "constant"},
    "dapo": {"epsilon_high": 0.28, "loss_agg": "token"},
    "rloo": {"epsilon_high": 0.2, "loss_agg": "sequence"},
}
# The smallest sampling.num_generations each algorithm can learn from.
MIN_GENERATIONS = {algo: 2 for algo in ALGOS}
