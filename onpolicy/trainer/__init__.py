"""onpolicy.trainer: the RL loop (`train(cfg)`), one step split along the data flow (rollout -> `score_rollouts`
-> `ScoredBatch` -> `update_policy`), losses, group advantages, parity metrics, SFT warm-start, checkpoints.
Importing it pulls in torch only (engine, data, rewards and logging load when `train` runs)."""
from onpolicy.trainer.loop import rl_step, train
from onpolicy.trainer.scoring import ScoredBatch, score_rollouts
from onpolicy.trainer.update import update_policy

__all__ = ["ScoredBatch", "rl_step", "score_rollouts", "train", "update_policy"]
