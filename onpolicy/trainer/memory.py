"""One GPU, two tenants: size the engine's KV cache from what the trainer leaves, and measure each phase's peak.

The KV cache is allocated once (the engine's CUDA graphs are captured on its tensors, so it is never freed);
`kv_cache_blocks` gives it what the step's sequences can use -- min(max_num_seqs, prompts x generations)
sequences of max_prompt_tokens + max_tokens -- capped by the GPU memory free at engine construction minus the
trainer's not-yet-allocated needs: AdamW state (8 B per parameter), fp32 master grads (4 B), the model-dtype
grads of one backward, and one micro-batch's activations (`activation_bytes`, an upper estimate); under FSDP2
(`sharded`) the AdamW state and master grads are 1 / world_size of that per rank. A smaller
cache is still correct (the scheduler preempts and recomputes), only slower. `engine.num_blocks` set in the
config wins; on the CPU the engine's own default stands. `PhasePeak` reads torch's peak-allocated counter
(CUDA only: the CPU has none; metrics are absent there). Left out: freeing the KV cache between phases
(vLLM's sleep mode: it would need re-capturing the graphs), fragmentation (reserved vs allocated memory).
"""
from __future__ import annotations

import torch

GIB = float(1 << 30)
# Safety factor on the activation estimate and a fixed slack for the allocator, cuBLAS workspaces, logits spans.
ACTIVATION_MARGIN = 1.5
FIXED_SLACK = 2 << 30


def step_tokens(cfg, world_size: int = 1) -> int:
    """Prompt + completion tokens of one micro-batch at most (a whole reduction chunk of a mini-batch without a
    budget: the whole mini-batch on one process with the default single chunk)."""
    from onpolicy.trainer.distributed import reduction_chunks

    t, s = cfg.trainer, cfg.sampling
    seq = cfg.data.max_prompt_tokens + s.max_tokens
    whole = t.prompts_per_step * s.num_generations // (t.mini_batches * reduction_chunks(cfg, world_size)) * seq
    return whole if t.micro_batch_tokens is None else min(whole, max(t.micro_batch_tokens, seq))


def activation_bytes(mc, tokens: int, checkpointing: bool, elem: int) -> int:
    """Upper estimate of the autograd activations of a `tokens`-token forward (per-layer saved tensors: norms,
    q/k/v, attention out, MLP gate/up/act; checkpointing keeps each layer's input plus the layer being recomputed)."""
    qkv = (mc.num_attention_heads + 2 * mc.num_key_value_heads) * mc.head_dim
    # MoE layers save each token's k expert rows: gate/up, activation and down output
    mlp = max(4 * mc.intermediate_size, mc.num_experts_per_tok * (3 * mc.moe_intermediate_size + mc.hidden_size))
    per_layer = tokens * elem * (6 * mc.hidden_size + 2 * qkv + mlp)
    if checkpointing:
        return mc.num_hidden_layers * tokens * mc.hidden_size * elem + per_layer
    return mc.num_hidden_layers * per_layer


def trainer_reserve_bytes(cfg, model, world_size: int = 1, sharded: bool = False) -> int:
    """Bytes the trainer will still allocate after the engine is built (see the module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    low = sum(p.numel() * p.element_size() for p in params if p.dtype != torch.float32)
    elem = next(iter(model.parameters())).element_size()
    acts = activation_bytes(model.config, step_tokens(cfg, world_size), cfg.trainer.activation_checkpointing, elem)
    state = (8 + 4) * n // (world_size if sharded else 1)  # AdamW moments + fp32 master grads
    return state + low + int(ACTIVATION_MARGIN * acts) + FIXED_SLACK


def kv_cache_blocks(cfg, model, device: torch.device, free_bytes: int | None = None,
                    world_size: int = 1, sharded: bool = False) -> int | None:
    """`engine.num_blocks` for this run (None: the engine's own sizing; see the module docstring); with
    `world_size` ranks each engine samples prompts_per_step / world_size prompts; `sharded`: FSDP2."""
    from onpolicy.engine.kv_cache import kv_bytes_per_block

    e, s, t = cfg.engine, cfg.sampling, cfg.trainer
    if e.num_blocks is not None or (device.type != "cuda" and free_bytes is None):
        return e.num_blocks
    mc = model.config
    seq = min(cfg.data.max_prompt_tokens + s.max_tokens + 1, mc.max_position_embeddings)
    want = min(e.max_num_seqs, t.prompts_per_step // world_size * s.num_generations) * -(-seq // e.block_size)
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    reserve = trainer_reserve_bytes(cfg, model, world_size, sharded)
    budget = free_bytes - reserve
    per_block = kv_bytes_per_block(mc, e.block_size, next(iter(model.parameters())).dtype)
    if budget < per_block * -(-seq // e.block_size):
        need = (reserve + per_block * -(-seq // e.block_size)) / GIB
        raise ValueError(f"trainer.micro_batch_tokens: the trainer's estimated needs plus one sequence's KV cache "
                         f"({need:.1f} GiB) exceed the free GPU memory ({free_bytes / GIB:.1f} GiB); set a smaller "
                         f"trainer.micro_batch_tokens or trainer.activation_checkpointing: true")
    return max(1, min(want, budget // per_block))


class PhasePeak:
    """`start()` then `gib()`: the peak GPU memory allocated since start, in GiB (None off CUDA)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def gib(self) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / GIB
