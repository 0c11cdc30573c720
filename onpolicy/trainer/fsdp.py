"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the trainer: sharded fp32 masters, gradients and AdamW state.

    train_model = shard_trainer(engine_model)           # fp32 masters, fully_shard per decoder layer + root
    opt = ShardedAdamW(train_model, engine_model, lr=...)
    sequence_logprobs(train_model, ...)                 # FSDP all-gathers bf16(master): the engine's bits
    loss.backward()                                     # FSDP reduce-scatters (SUM, fp32) into sharded grads
    opt.clip_grad_norm_(1.0); opt.step()                # AdamW on the shards, then the engine's full copy
                                                        # is gathered once: cast on the shard, full_tensor()

Engine placement: each rank keeps the full model in `model.dtype` for its engine (and for the HF policy
checkpoint); the trainer never runs it. The trainer runs `train_model`, whose parameters are fp32 DTensor
shards; `MixedPrecisionPolicy(param_dtype=model.dtype, reduce_dtype=fp32, cast_forward_inputs=False)` makes
FSDP cast each shard to model.dtype before its all-gather. The cast rounds elementwise (nearest even), so the
gathered weights equal the engine copy `master.to(dtype).full_tensor()` bit for bit, and sampler and trainer
logprobs stay equal (KL 0.0). cast_forward_inputs is off: the fp32 RoPE table passed to each layer must stay
fp32. `token_logprobs` (the lm_head, outside `forward`) is registered with `register_fsdp_forward_method`.
Gradients: each backward reduce-scatters the model.dtype gradient in fp32 with ReduceOp.SUM (divide factor 1:
the loss already carries the global normalisers) and FSDP adds it to the fp32 sharded grad, so at world size 1
the update equals the single-process one bitwise. Every rank must run the same number of forward/backward
passes (each one is a collective): `idle_micro_batch` pads a rank with fewer micro-batches (a zero loss).
Reductions: the reduce-scatter's order is the backend's (gloo; NCCL with `NCCL_PINS`); with 2 ranks a sum of
two is commutative, so any order gives the same bits. World-size invariance does not hold: rank gradients
are summed per micro-batch before accumulation, not per chunk in a fixed tree (docs/distributed.md).
MoE layers: the 3-D expert tensors [E, rows, cols] shard along E like any parameter's dim 0 (an E that W does not
divide is padded by FSDP); each layer's forward gathers every expert.
Left out: expert parallelism, CPU offload, FSDP's own activation checkpointing (trainer.activation_checkpointing works),
HSDP/tensor parallel, resuming on another world size (refused), the vLLM backend (refused).
"""
from __future__ import annotations

import os

import torch

NCCL_PINS = {"NCCL_ALGO": "Ring", "NCCL_PROTO": "Simple"}  # set before the NCCL communicator exists
SHARDS_DIR = "optimizer"  # in a checkpoint step directory: DCP files of the sharded masters + AdamW state


def fsdp_requested(env=None) -> bool:
    """True when the launcher's accelerate config says distributed_type: FSDP."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_env(cfg, env, world_size: int) -> None:
    """Errors before compute for FSDP settings this trainer cannot honour (one owner per setting): the
    accelerate config's FSDP fields, and the trainer settings FSDP2 replaces (its reduce-scatter sums the
    gradients: reduction_chunks and grad_reduction), engine.backend."""
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"accelerate config: fsdp_version {version} is not supported; allowed: 2 "
                         "(configs/accelerate/fsdp2.yaml, cpu_fsdp2.yaml)")
    if env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ValueError("accelerate config: fsdp_offload_params true is not supported; allowed: false")
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise ValueError("accelerate config: fsdp_activation_checkpointing is not used; allowed: false (set "
                         "trainer.activation_checkpointing: true instead)")
    chunks = cfg.trainer.reduction_chunks
    if chunks is not None and chunks != world_size:
        raise ValueError(f"trainer.reduction_chunks: {chunks} with FSDP2 (FSDP reduce-scatters every backward); "
                         f"allowed: null or the world size {world_size}")
    if cfg.trainer.grad_reduction != "tree":
        raise ValueError(f"trainer.grad_reduction: {cfg.trainer.grad_reduction!r} with FSDP2 (FSDP reduce-scatters"
                         " itself); allowed: tree (the default)")
    if cfg.engine.backend != "native":
        raise ValueError(f"engine.backend: {cfg.engine.backend!r} with FSDP2 is not supported; allowed: native")


def pin_nccl(env=None) -> None:
    """NCCL's algorithm and protocol fixed for FSDP's reduce-scatter/all-gather (user values win)."""
    env = os.environ if env is None else env
    for key, value in NCCL_PINS.items():
        env.setdefault(key, value)


def _mesh(device: torch.device):
    import torch.distributed as td
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (td.get_world_size(),))


def shard_trainer(engine_model, device: torch.device):
    """An fp32 copy of `engine_model`, `fully_shard`ed per decoder layer and at the root (built on the meta
    device; each rank fills only its own shard from the full weights it already holds)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import distribute_tensor

    from onpolicy.model.transformer import CausalLM

    mesh = _mesh(device)
    dtype = engine_model.config.torch_dtype
    policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
    with torch.device("meta"):
        model = CausalLM(engine_model.config.replace(dtype="float32"), init=False)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    register_fsdp_forward_method(model, "token_logprobs")
    for module in model.modules():  # a plain SUM: the loss weights already hold the global normalisers
        if hasattr(module, "set_gradient_divide_factor"):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    model.to_empty(device=device)
    full = dict(engine_model.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            mine = distribute_tensor(full[name].detach().float(), mesh, p.placements, src_data_rank=None)
            p.to_local().copy_(mine.to_local())
            p.requires_grad_(full[name].requires_grad)  # frozen weights (e.g. `model.freeze_router`) get no grads
    model.activation_checkpointing = engine_model.activation_checkpointing
    return model


def idle_micro_batch(model) -> None:
    """A forward/backward with a zero loss (zero gradients), so that this rank joins the collectives of a
    micro-batch it does not have."""
    from onpolicy.model import sequence_logprobs

    with torch.enable_grad():
        lps = sequence_logprobs(model, [[0]], [[0]])
        (torch.cat(lps).sum() * 0.0).backward()


class ShardedAdamW:
    """AdamW over the FSDP2-sharded fp32 masters of `train_model`; `step` refreshes `engine_model`'s full
    copy. Same interface as precision.MasterWeightAdamW (which see); `params` are the engine's tensors; `names`:
    the trainable parameters (onpolicy.trainer.trainable; None: every one with requires_grad)."""

    def __init__(self, train_model, engine_model, names: set[str] | None = None, **adamw_kwargs):
        self.train_model = train_model
        named = [(n, p) for n, p in train_model.named_parameters()
                 if p.requires_grad and (names is None or n in names)]
        engine = dict(engine_model.named_parameters())
        self.masters = [p for _, p in named]
        self.params = [engine[n] for n, _ in named]
        self.optimizer = torch.optim.AdamW(self.masters, **adamw_kwargs)
        self.steps_started = 0  # as precision.MasterWeightAdamW

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def accumulate_grads(self) -> None:
        """Nothing to do: FSDP reduce-scatters each backward into the fp32 sharded gradients."""

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the sharded grads to total L2 norm `max_norm` (the norm is reduced across ranks)."""
        from torch.distributed.tensor import DTensor

        grads = [m for m in self.masters if m.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def step(self) -> None:
        self.steps_started += 1
        self.optimizer.step()
        self.gather_()

    @torch.no_grad()
    def gather_(self) -> None:
        """The engine's full copy: every master cast to the engine dtype on its shard, then all-gathered."""
        for p, m in zip(self.params, self.masters):
            p.copy_(m.detach().to(p.dtype).full_tensor())

    def zero_grad(self) -> None:
        for t in self.masters + self.params:
            t.grad = None

    def state_dict(self) -> dict:
        raise ValueError("ShardedAdamW: the state is sharded; use save_sharded/load_sharded (DCP)")

    def save_sharded(self, path) -> None:
        """Collective: every rank writes its shard of the masters and AdamW state (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        masters, optim = get_state_dict(self.train_model, self.optimizer)
        dcp.save({"masters": masters, "optim": optim}, checkpoint_id=str(path))

    def load_sharded(self, path) -> None:
        """Collective: restore the masters and AdamW state written by `save_sharded`, then the engine copy."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        masters, optim = get_state_dict(self.train_model, self.optimizer)
        state = {"masters": masters, "optim": optim}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.train_model, self.optimizer, model_state_dict=state["masters"],
                       optim_state_dict=state["optim"])
        self.gather_()


def save_fsdp_checkpoint(dist, root, step: int, state) -> None:
    """Every rank writes its shard of the masters and AdamW state (DCP) into the step's temporary directory;
    rank 0 adds the full policy (the engine's copy as HF safetensors), the trainer state, meta.json and the
    manifest, and commits the directory atomically (onpolicy.trainer.checkpoint). `state`:
    parallel.CheckpointState."""
    from onpolicy.trainer import checkpoint

    if dist.is_main:
        checkpoint.prepare_tmp(root, step)
    dist.barrier()
    cfg = state.cfg
    only = cfg.trainer.save_only_model
    if not only:
        state.optimizer.save_sharded(root / f"tmp-step-{step}" / SHARDS_DIR)
        dist.barrier()
    if dist.is_main:
        checkpoint.save_checkpoint(root, step=step, model=state.model, tokenizer=state.tokenizer,
                                   extra=state.extra, keep=cfg.trainer.keep_checkpoints,
                                   meta={"config": cfg.to_dict(), "world_size": dist.world_size, "fsdp": True,
                                         **({"model_only": True} if only else {})},
                                   prepared=True)
    dist.barrier()
