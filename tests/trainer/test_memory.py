"""KV-cache sizing next to the trainer (`trainer.memory.kv_cache_blocks`) and per-phase peaks (CPU: absent)."""
import pytest
import torch

from onpolicy.engine.kv_cache import kv_bytes_per_block
from onpolicy.model.tiny import build_tiny
from onpolicy.trainer.memory import PhasePeak, kv_cache_blocks, trainer_reserve_bytes

CONFIG = "configs/tiny-cpu.yaml"


def _cfg(**over):
    from onpolicy.config import parse_args

    argv = ["--config", CONFIG]
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return parse_args(argv)


def test_kv_cache_holds_the_step_when_memory_allows_and_shrinks_when_not():
    cfg = _cfg(**{"trainer.prompts_per_step": 4, "sampling.num_generations": 4})
    model = build_tiny(seed=0)[0]
    seq_blocks = -(-(cfg.data.max_prompt_tokens + cfg.sampling.max_tokens + 1) // cfg.engine.block_size)
    reserve = trainer_reserve_bytes(cfg, model)
    per_block = kv_bytes_per_block(model.config, cfg.engine.block_size, torch.float32)
    assert kv_cache_blocks(cfg, model, torch.device("cpu"), free_bytes=reserve + 10**12) == 16 * seq_blocks
    assert kv_cache_blocks(cfg, model, torch.device("cpu"), free_bytes=reserve + 5 * per_block) == 5
    with pytest.raises(ValueError, match="trainer.micro_batch_tokens"):
        kv_cache_blocks(cfg, model, torch.device("cpu"), free_bytes=reserve)
    assert kv_cache_blocks(_cfg(**{"engine.num_blocks": 7}), model, torch.device("cpu"), free_bytes=1) == 7
    assert kv_cache_blocks(cfg, model, torch.device("cpu")) is None  # CPU: the engine's own default


def test_trainer_reserve_shrinks_with_micro_batches_and_checkpointing():
    model = build_tiny(seed=0)[0]
    whole = trainer_reserve_bytes(_cfg(), model)
    micro = trainer_reserve_bytes(_cfg(**{"trainer.micro_batch_tokens": 32}), model)
    both = trainer_reserve_bytes(_cfg(**{"trainer.micro_batch_tokens": 32,
                                         "trainer.activation_checkpointing": "true"}), model)
    assert whole > micro > both


def test_fsdp2_reserves_a_shard_of_the_optimizer_state():
    """Under FSDP2 each rank holds 1/W of the AdamW moments and master grads: the KV cache gets the rest."""
    cfg = _cfg(**{"trainer.prompts_per_step": 4, "sampling.num_generations": 4})
    model = build_tiny(seed=0)[0]
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    replicated = trainer_reserve_bytes(cfg, model, world_size=2)
    sharded = trainer_reserve_bytes(cfg, model, world_size=2, sharded=True)
    assert replicated - sharded == 12 * n - 12 * n // 2
    per_block = kv_bytes_per_block(model.config, cfg.engine.block_size, torch.float32)
    free = replicated + 3 * per_block
    cpu = torch.device("cpu")
    assert kv_cache_blocks(cfg, model, cpu, free_bytes=free, world_size=2) == 3
    seq_blocks = -(-(cfg.data.max_prompt_tokens + cfg.sampling.max_tokens + 1) // cfg.engine.block_size)
    want = 4 // 2 * 4 * seq_blocks  # this rank's share of the step's sequences
    blocks = kv_cache_blocks(cfg, model, cpu, free_bytes=free, world_size=2, sharded=True)
    assert blocks == min(want, 3 + (replicated - sharded) // per_block) > 3


def test_phase_peak_is_none_on_cpu():
    peak = PhasePeak(torch.device("cpu"))
    peak.start()
    assert peak.gib() is None
