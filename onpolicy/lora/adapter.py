"""LoRA adapters on onpolicy's projections, unmerged: y = x @ W.T + s * (x @ A.T) @ B.T.

`attach_lora(model, args)` freezes every base weight and gives each targeted `Linear` a `LoraAdapter` (its
`lora` submodule); `Linear.forward` then adds the adapter's output. The sampler and the trainer run this one
forward through two batch-invariant `kernels` ops (`lora_shrink`: t = x @ A.T; `lora_expand_add`: y + s * t @ B.T
on each adapted column block; tiles from the shapes, never from the row count), so a token's logprob has the
same bits in both, as for the base weights.
A fused projection (qkv, gate_up) holds one A for its targeted row blocks, stacked ([S * r, in]: one pass over
x), and their B stacked ([targeted rows, r]); the columns of an untargeted block (e.g. k when only q and v are
targeted) are copied. Values start as PEFT's: A Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) from
a seeded CPU generator, B zero. Adapters have the model's dtype (the one copy both modes read); the optimizer
keeps their fp32 masters. Left out: merging into the base weights at run time (see docs/lora.md), dropout,
adapters on families whose HF checkpoints store fused projections (Phi-3), on q/k of partial-rotary models and
on MoE experts.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from onpolicy import kernels
from onpolicy.lora.config import PEFT_TARGETS, LoraArgs

WHOLE = "out"  # the block name of an unfused projection


class LoraAdapter(nn.Module):
    """Adapters of one projection: `lora_A` [S * r, in] (the targeted blocks' A stacked) and `lora_B`
    [targeted rows, r] (their B stacked); `layout` lists every row block of the projection in order as (block,
    rows, targeted), `blocks` the same for `kernels.lora_expand_add` (y column, rows, t column or -1, B row)."""

    def __init__(self, layout: list[tuple[str, int, bool]], in_features: int, r: int, scaling: float,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.layout, self.r, self.scaling = layout, r, scaling
        blocks, y_col, j, b_row = [], 0, 0, 0
        self._rows = {}
        for name, rows, on in layout:
            blocks.append((y_col, rows, j * r if on else -1, b_row if on else 0))
            if on:
                self._rows[name] = (j, b_row, rows)
                j, b_row = j + 1, b_row + rows
            y_col += rows
        self.blocks = tuple(blocks)
        self.lora_A = nn.Parameter(torch.zeros(j * r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(b_row, r, dtype=dtype, device=device))

    def block_names(self) -> list[str]:
        """The targeted row blocks, in row order."""
        return list(self._rows)

    def block_A(self, name: str) -> torch.Tensor:
        j, _, _ = self._rows[name]
        return self.lora_A[j * self.r : (j + 1) * self.r]

    def block_B(self, name: str) -> torch.Tensor:
        _, start, rows = self._rows[name]
        return self.lora_B[start : start + rows]

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> None:
        """PEFT's init: each block's A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform, a = sqrt(5)), B = 0."""
        for name in self.block_names():
            a = torch.empty(self.r, self.lora_A.shape[1], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.block_A(name).copy_(a)
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y + s * (x @ A_j.T) @ B_j.T on each targeted block j; x [..., in], y [..., out]."""
        t = kernels.lora_shrink(x.reshape(-1, x.shape[-1]), self.lora_A)
        out = kernels.lora_expand_add(y.reshape(-1, y.shape[-1]), t, self.lora_B, self.blocks, self.scaling)
        return out.reshape(y.shape)

    @torch.no_grad()
    def delta_weight(self, name: str) -> torch.Tensor:
        """s * B @ A of one block in fp32 [rows, in]: what merging adds to the base weight's rows."""
        return (self.block_B(name).float() @ self.block_A(name).float()) * self.scaling


def check_supported(model, args: LoraArgs) -> None:
    """Refuse, naming the field, a model these adapters cannot be saved or loaded for in PEFT's layout."""
    cfg = model.config
    if cfg.arch.fused_checkpoint:
        raise ValueError(f"lora.r: adapters are not supported for {cfg.arch.hf_class} (its HF checkpoints store "
                         "fused qkv/gate_up projections); allowed for it: 0")
    mlp = {"gate_proj", "up_proj", "down_proj"} & set(args.target_modules)
    if mlp and any(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers)):
        raise ValueError(f"lora.target_modules: {sorted(mlp)} on a model with MoE layers are not supported (experts "
                         "get no adapters); allowed: q_proj, k_proj, v_proj, o_proj")
    if cfg.partial_rotary_factor != 1.0 and {"q_proj", "k_proj"} & set(args.target_modules):
        raise ValueError("lora.target_modules: q_proj/k_proj are not supported on a partial-rotary model; allowed: "
                         + ", ".join(t for t in PEFT_TARGETS if t not in ("q_proj", "k_proj")))


def _layout(linear, blocks: list) -> list[tuple[str, int, bool]]:
    if linear.shards is None:
        return [(WHOLE, linear.weight.shape[0], True)]
    return [(name, rows, name in blocks) for name, (_, rows) in linear.shards.items()]


def attach_lora(model, args: LoraArgs, seed: int = 0) -> list[nn.Parameter]:
    """Freeze `model`'s weights and attach adapters to the projections `args.target_modules` names, in every
    layer; returns the adapter parameters (what the optimizer trains). Values from PEFT's init (seeded).
    `model.lora_config` keeps `args` (what saving writes into adapter_config.json)."""
    if not args.enabled:
        raise ValueError("attach_lora: lora.r is 0 (no adapters); allowed: an int >= 1")
    check_supported(model, args)
    if any(True for _ in iter_adapters(model)):
        raise ValueError("attach_lora: the model already has adapters")
    model.requires_grad_(False)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    by_module: dict[str, list] = {}
    for target in args.target_modules:
        module, block = PEFT_TARGETS[target]
        by_module.setdefault(module, []).append(block)
    modules = [m for m in dict.fromkeys(m for m, _ in PEFT_TARGETS.values()) if m in by_module]
    for layer in model.model.layers:
        for module in modules:
            linear = layer.get_submodule(module)
            w = linear.weight
            adapter = LoraAdapter(_layout(linear, by_module[module]), w.shape[1], args.r, args.scaling, w.dtype,
                                  w.device)
            adapter.reset(generator)
            linear.lora = adapter
    model.lora_config = args
    return [p for p in model.parameters() if p.requires_grad]


def iter_adapters(model):
    """(layer index, module name under the layer, LoraAdapter) for every adapter, in layer then name order."""
    for i, layer in enumerate(model.model.layers):
        for name, module in layer.named_modules():
            if isinstance(module, LoraAdapter):
                yield i, name.rpartition(".")[0], module


def has_lora(model) -> bool:
    return any(True for _ in iter_adapters(model))
