"""onpolicy.trainer: the RL loop (`train(cfg)`), losses, group advantages, parity metrics, SFT warm-start,
checkpoints. Importing it pulls in torch only (engine, data, rewards and logging load when `train` runs)."""
from onpolicy.trainer.loop import rl_step, train

__all__ = ["rl_step", "train"]
