"""onpolicy.trainer: the RL loop (`train(cfg)`) over a `Trainer` (model, optimizer, sampler, logger and one
parallelism strategy), one step split along the data flow (`RolloutSource` -> `score_rollouts` -> `ScoredBatch` ->
`update_policy`), losses, group advantages, parity metrics, SFT warm-start, checkpoints.
Importing it pulls in torch only (engine, data, rewards and logging load when `train` runs)."""
from onpolicy.trainer.loop import rl_step, train
from onpolicy.trainer.parallel import FSDP2, Replicated
from onpolicy.trainer.rollout import RolloutSource, SingleTurnRollouts
from onpolicy.trainer.scoring import ScoredBatch, score_rollouts
from onpolicy.trainer.trainable import FullFineTuning, TrainableParams
from onpolicy.trainer.trainer import Trainer, TrainerParts
from onpolicy.trainer.update import UpdateParts, update_policy

__all__ = ["FSDP2", "FullFineTuning", "Replicated", "RolloutSource", "ScoredBatch", "SingleTurnRollouts",
           "Trainer", "TrainerParts", "TrainableParams", "UpdateParts", "rl_step", "score_rollouts", "train",
           "update_policy"]
