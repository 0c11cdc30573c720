"""A launch (`accelerate launch`, torchrun, or one plain process) checked and started before any model.

    check_launch(cfg)            # world size against the config, the accelerate config, the launcher
    is_main = start_processes(cfg)

Every rank runs both. The world size must be a power of two dividing trainer.prompts_per_step, and the
reduction chunks a multiple of it (the config itself checks that they are a power of two dividing a
mini-batch's prompts); the parallelism strategy the accelerate config asks for checks its own settings
(onpolicy.trainer.parallel). Left out: multi-node launches (nothing here stops one, nothing tests it).
"""
from __future__ import annotations

import os

from onpolicy.config_fields import ConfigError


def launched_world_size(env=None) -> int:
    """WORLD_SIZE as set by `accelerate launch` / torchrun (1 when not launched), before any process group."""
    return int((os.environ if env is None else env).get("WORLD_SIZE", "1"))


def check_world_size(cfg, world_size: int) -> None:
    """The world size is a power of two dividing prompts_per_step (whole prompt groups per rank), and the
    reduction chunks are a multiple of it."""
    from onpolicy.trainer.distributed import reduction_chunks

    t = cfg.trainer
    if world_size < 1 or world_size & (world_size - 1):
        raise ValueError(f"world size {world_size}: the fixed-order gradient reduction needs a power of two "
                         "number of processes; allowed: 1, 2, 4, 8, ...")
    if t.prompts_per_step % world_size:
        raise ValueError(f"trainer.prompts_per_step: {t.prompts_per_step} is not divisible by the world size "
                         f"{world_size} (whole prompt groups per rank); allowed: a multiple of {world_size}")
    chunks = reduction_chunks(cfg, world_size)
    if chunks % world_size:
        per_mini = t.prompts_per_step // t.mini_batches
        raise ValueError(f"trainer.reduction_chunks: {chunks} must be a power of two, a multiple of the world size "
                         f"{world_size} and divide the prompts of one mini-batch ({per_mini}); allowed: null "
                         f"(= world size) or such a power of two")


def check_launch_env(cfg, env=None) -> None:
    """Errors before compute for an accelerate config this trainer cannot honour (read from the launcher's
    environment): the chosen strategy's own settings (FSDP2: `fsdp.check_fsdp_env`), mixed precision
    (autocast; precision comes from model.dtype), use_cpu with model.device: cuda."""
    from onpolicy.trainer.parallel import strategy_class

    env = os.environ if env is None else env
    strategy_class(env).check_launch(cfg, env, launched_world_size(env))
    mp = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp not in ("no", "none"):
        raise ValueError(f"accelerate config: mixed_precision {mp!r} is not supported (the kernels run "
                         f"model.dtype themselves, fp32 masters); allowed: 'no' (set model.dtype: bfloat16)")
    if env.get("ACCELERATE_USE_CPU", "false").lower() == "true" and cfg.model.device == "cuda":
        raise ValueError("model.device: 'cuda' but the accelerate config has use_cpu: true; allowed: cpu, auto")


def check_launch(cfg, env=None) -> None:
    """Launch errors before any process group or model, on every rank: accelerate's simple launcher
    (distributed_type: 'NO', as configs/accelerate/cpu.yaml) runs ONE process whatever --num_processes says (it
    sets MASTER_ADDR, only for num_processes > 1, beside ACCELERATE_USE_CPU but no WORLD_SIZE); then the
    accelerate config and the world size."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env and "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env:
        raise ConfigError("launch: accelerate was asked for num_processes > 1 (it set MASTER_ADDR) but its simple "
                          "launcher (distributed_type: 'NO') starts one process; allowed: --num_processes 1, or "
                          "configs/accelerate/cpu_ddp.yaml for several CPU processes")
    check_launch_env(cfg, env)
    check_world_size(cfg, launched_world_size(env))


def start_processes(cfg) -> bool:
    """When the launch needs a process group (several processes, or any FSDP2 launch: fully_shard needs one),
    start it through accelerate and select this rank's GPU; True on rank 0. `cfg.model.device` is left as
    validated ("cuda" then means this rank's GPU)."""
    import torch

    from onpolicy.trainer.parallel import strategy_class

    strategy = strategy_class()
    strategy.before_process_group()
    if not strategy.needs_process_group(launched_world_size()):
        return True
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    if accelerator.device.type == "cuda":
        torch.cuda.set_device(accelerator.device)
    return accelerator.is_main_process
