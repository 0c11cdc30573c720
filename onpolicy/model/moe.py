"""The sparse MoE MLP (Qwen3-MoE) on `kernels` ops, and its checkpoint names.

MoEMLP(x [T, H]): router logits = kernels.linear(x, gate.weight) (the batch-invariant GEMM, in the model dtype as
transformers computes them); `kernels.moe_route`: softmax in fp32, the top-k experts by a stable sort (equal
probabilities: the lowest expert id wins), weights renormalised when `norm_topk_prob`; `kernels.moe_layout`
sorts the (token, rank) pairs by expert into row blocks; the experts' gate/up and down projections run as
`kernels.grouped_linear` (fixed tiles, each row reduced on its own) with `kernels.silu_mul` between; and
`kernels.moe_combine` adds a token's k weighted expert outputs in rank order in fp32. Every step is row-wise or
reduces a row on its own, so a token's experts and output do not depend on its batch: the sampler and the
trainer pick the same experts without replaying routes.
Parameters: `gate.weight` [E, H] (HF's name), `experts.gate_up_proj` [E, 2 * I, H] (gate rows, then up) and
`experts.down_proj` [E, H, I] -- transformers 5's fused layout; per-expert checkpoints
(`experts.{e}.gate_proj.weight`, as `save_pretrained` writes them) load through the shard loaders.
`record_routing(model)` collects each MoE layer's expert ids per forward (the parity metric's input);
`router_aux_loss(model)` transformers' load-balancing loss of the forwards run inside it.
Left out: shared experts (Qwen2-MoE), expert parallelism, capacity limits, the auxiliary loss's own kernel.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from onpolicy import kernels
from onpolicy.kernels.moe_routing import softmax_fp32
from onpolicy.model.config import ModelConfig
from onpolicy.model.layers import Linear, _default_loader

_EXPERT_KEY = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _expert_loader(intermediate: int):
    """weight_loader of a [E, rows, cols] expert tensor: shard (kind, e) loads one expert's gate / up / down
    matrix, shard None the whole fused tensor."""

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            _default_loader(param, loaded)
            return
        kind, e = shard_id
        rows = slice(0, intermediate) if kind == "gate" else slice(intermediate, 2 * intermediate) if kind == "up" \
            else slice(None)
        target = param[e, rows]
        if tuple(loaded.shape) != tuple(target.shape):
            raise ValueError(f"weight_loader: expert {e} {kind} has shape {tuple(loaded.shape)}, expected "
                             f"{tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(loaded)

    return load


def _expert_param(shape, dtype, intermediate: int, kinds: tuple[str, ...]) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype))
    p.weight_loader = _expert_loader(intermediate)
    p.shard_ids = [(kind, e) for e in range(shape[0]) for kind in kinds]
    return p


class Experts(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, h, i, dt = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, cfg.torch_dtype
        self.intermediate_size = i
        self.gate_up_proj = _expert_param((e, 2 * i, h), dt, i, ("gate", "up"))
        self.down_proj = _expert_param((e, h, i), dt, i, ("down",))


class MoEMLP(nn.Module):
    """Router + experts of one sparse layer (see the module docstring); `routing_sink`: a list the layer
    appends its expert ids [T, k] to, `logits_sink`: one it appends (router logits, expert ids) to (None: not
    recorded)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k, self.normalize = cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, False, cfg.torch_dtype)
        self.experts = Experts(cfg)
        self.routing_sink: list | None = None
        self.logits_sink: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)
        weights, ids = kernels.moe_route(logits, self.top_k, self.normalize)
        if self.routing_sink is not None:
            self.routing_sink.append(ids)
        if self.logits_sink is not None:
            self.logits_sink.append((logits, ids))
        layout = kernels.moe_layout(ids, self.num_experts, kernels.moe_block_m(x.dtype))
        i = self.experts.intermediate_size
        h = kernels.grouped_linear(x, self.experts.gate_up_proj, layout, gather=True)
        act = kernels.silu_mul(h[:, :i], h[:, i:])
        rows = kernels.grouped_linear(act, self.experts.down_proj, layout, gather=False)
        return kernels.moe_combine(rows, weights, layout.pair_row)


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def freeze_router(model: nn.Module) -> None:
    """Stop training the routers (`model.freeze_router`): their gate weights get requires_grad False."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model.freeze_router: true needs a model with MoE layers (e.g. qwen3_moe); allowed: false")
    for layer in layers:
        layer.gate.weight.requires_grad_(False)


class RoutingRecord:
    """Expert ids recorded by `record_routing`: one list of [T, k] tensors per MoE layer, one entry per forward."""

    def __init__(self, layers: list[MoEMLP]):
        self.sinks = [[] for _ in layers]

    def forwards(self) -> list[torch.Tensor]:
        """Per recorded forward: int64 [T, moe layers, k] (CPU) -- every MoE layer's experts for each token."""
        return [torch.stack(per_layer, 1).cpu() for per_layer in zip(*self.sinks)]


@contextlib.contextmanager
def record_routing(model: nn.Module):
    """Record every MoE layer's expert ids of each forward run inside the block (yields a `RoutingRecord`).
    An activation-checkpointing recompute in the backward records again: read the record before backward."""
    layers = moe_layers(model)
    record = RoutingRecord(layers)
    for layer, sink in zip(layers, record.sinks):
        layer.routing_sink = sink
    try:
        yield record
    finally:
        for layer in layers:
            layer.routing_sink = None


class RouterAux:
    """Router logits and choices collected by `router_aux_loss`; `loss()` is transformers' load-balancing loss
    over every collected token of every MoE layer: E * sum_e (fraction of choices on e) * (mean probability of e),
    the fraction taken per rank (as `load_balancing_loss_func`). Differentiable in the logits."""

    def __init__(self, layers: list[MoEMLP]):
        self.entries: list = []
        self.num_experts = layers[0].num_experts if layers else 0

    def loss(self) -> torch.Tensor:
        if not self.entries:
            raise ValueError("router_aux_loss: no MoE forward ran inside the block")
        probs = softmax_fp32(torch.cat([logits for logits, _ in self.entries]))
        ids = torch.cat([ids for _, ids in self.entries])
        chosen = torch.nn.functional.one_hot(ids, self.num_experts).float().mean(0)  # [k, E]
        return (chosen * probs.mean(0)[None]).sum() * self.num_experts


@contextlib.contextmanager
def router_aux_loss(model: nn.Module, enabled: bool = True):
    """Collect the router logits of the forwards inside the block (yields a `RouterAux`; None when not enabled)."""
    layers = moe_layers(model) if enabled else []
    if enabled and not layers:
        raise ValueError("model.router_aux_loss_coef: > 0 needs a model with MoE layers; allowed: 0.0")
    aux = RouterAux(layers) if enabled else None
    for layer in layers:
        layer.logits_sink = aux.entries
    try:
        yield aux
    finally:
        for layer in layers:
            layer.logits_sink = None


def expert_key(hf_key: str) -> tuple[str, tuple[str, int]] | None:
    """A per-expert HF key -> (our fused parameter name, shard id); None for other keys."""
    m = _EXPERT_KEY.match(hf_key)
    if m is None:
        return None
    prefix, e, kind = m.group(1), int(m.group(2)), m.group(3)
    fused = "down_proj" if kind == "down_proj" else "gate_up_proj"
    return f"{prefix}.{fused}", (kind.removesuffix("_proj"), e)


def expert_hf_tensors(name: str, param: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Our fused expert parameter -> its per-expert HF tensors (the layout transformers' save_pretrained writes);
    None for other parameters."""
    prefix, _, leaf = name.rpartition(".")
    if not prefix.endswith(".mlp.experts") or leaf not in ("gate_up_proj", "down_proj"):
        return None
    p = param.detach()
    if leaf == "down_proj":
        return {f"{prefix}.{e}.down_proj.weight": p[e] for e in range(p.shape[0])}
    i = p.shape[1] // 2
    out = {}
    for e in range(p.shape[0]):
        out[f"{prefix}.{e}.gate_proj.weight"] = p[e, :i]
        out[f"{prefix}.{e}.up_proj.weight"] = p[e, i:]
    return out
