"""The fixed-order gradient reduction: one binary tree over the chunks whether they sit on 1, 2 or 4 ranks
(gloo, spawned processes), the same bits on every rank; launch checks that refuse before compute."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from onpolicy.config import ExperimentConfig
from onpolicy.trainer.distributed import ChunkTree, Dist
from onpolicy.trainer.launch import check_launch_env, check_world_size

N_CHUNKS, NUMEL = 4, 4096


def _chunks() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # magnitudes spread over decades, so the order of the fp32 adds shows in the bits
    return [torch.randn(NUMEL, generator=g) * 10.0 ** torch.randint(-4, 4, (NUMEL,), generator=g)
            for _ in range(N_CHUNKS)]


def _tree(chunks: list[torch.Tensor]) -> torch.Tensor:
    tree = ChunkTree()
    for c in chunks:
        tree.push(c.clone())
    return tree.result()


def test_chunk_tree_is_the_binary_tree_and_order_matters():
    g = _chunks()
    assert torch.equal(_tree(g), (g[0] + g[1]) + (g[2] + g[3]))
    assert not torch.equal(_tree(g), ((g[0] + g[1]) + g[2]) + g[3])  # the order is visible in the bits
    tree = ChunkTree()
    for c in g[:3]:
        tree.push(c.clone())
    with pytest.raises(RuntimeError, match="power-of-two"):
        tree.result()


def _worker(rank: int, world: int, init_file: str, out: dict) -> None:
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        per_rank = N_CHUNKS // world
        mine = _chunks()[rank * per_rank:(rank + 1) * per_rank]
        flat = _tree(mine)
        Dist(rank, world).tree_sum_(flat)
        out[rank] = flat
    finally:
        td.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_tree_sum_same_bits_on_every_rank_and_as_one_process(tmp_path, world):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), out), nprocs=world, join=True)
    expected = _tree(_chunks())  # world size 1, the same chunks
    for rank in range(world):
        assert torch.equal(out[rank], expected), rank


def _cfg(**trainer):
    return ExperimentConfig.from_dict({"trainer": trainer})


def test_world_size_checks():
    check_world_size(_cfg(prompts_per_step=16), 4)
    with pytest.raises(ValueError, match="power of two"):
        check_world_size(_cfg(prompts_per_step=12), 3)
    with pytest.raises(ValueError, match="trainer.prompts_per_step: 6 is not divisible by the world size 4"):
        check_world_size(_cfg(prompts_per_step=6), 4)
    with pytest.raises(ValueError, match="trainer.reduction_chunks: 2 must be .* a multiple of the world size 4"):
        check_world_size(_cfg(prompts_per_step=16, reduction_chunks=2), 4)


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_FSDP": "true"}, "fsdp_version 1 is not supported"),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "mixed_precision 'bf16' is not supported"),
    ({"ACCELERATE_USE_CPU": "True"}, "model.device: 'cuda' but the accelerate config has use_cpu: true"),
])
def test_accelerate_config_mismatch_refused(env, message):
    cfg = ExperimentConfig.from_dict({"model": {"device": "cuda"}})
    with pytest.raises(ValueError, match=message):
        check_launch_env(cfg, env)
    check_launch_env(cfg, {"ACCELERATE_USE_CPU": "False", "ACCELERATE_MIXED_PRECISION": "no"})


def test_kv_cache_and_activation_reserve_per_rank():
    """Each rank's engine holds its share of the step's sequences; a micro-batch is at most one chunk."""
    from onpolicy.engine.kv_cache import kv_bytes_per_block
    from onpolicy.model.tiny import build_tiny
    from onpolicy.trainer.memory import kv_cache_blocks, step_tokens, trainer_reserve_bytes

    from onpolicy.config import parse_args

    cfg = parse_args(["--config", str(Path(__file__).resolve().parents[2] / "configs/tiny-cpu.yaml"), "--trainer.prompts_per_step", "8",
                      "--sampling.num_generations", "4"])
    model = build_tiny(seed=0)[0]
    seq_blocks = -(-(cfg.data.max_prompt_tokens + cfg.sampling.max_tokens + 1) // cfg.engine.block_size)
    free = trainer_reserve_bytes(cfg, model) + 10**12
    cpu = torch.device("cpu")
    assert kv_cache_blocks(cfg, model, cpu, free_bytes=free) == 32 * seq_blocks
    assert kv_cache_blocks(cfg, model, cpu, free_bytes=free, world_size=2) == 16 * seq_blocks
    assert step_tokens(cfg, world_size=2) * 2 == step_tokens(cfg)
    assert trainer_reserve_bytes(cfg, model, world_size=2) < trainer_reserve_bytes(cfg, model)
    assert kv_bytes_per_block(model.config, cfg.engine.block_size, torch.float32) > 0
