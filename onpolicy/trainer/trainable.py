"""What is trainable: the parameters the optimizer updates (and keeps fp32 masters for).

    trainable = FullFineTuning()
    params = trainable.select(model)          # [(name, parameter)], in model.named_parameters() order
    optimizer = strategy.build_optimizer(model, params, cfg.trainer, device)

`select` may change the model first (freeze base weights, attach adapters); the optimizer then holds masters
and AdamW state for the selected parameters only, and everything else stays as loaded, in `model.dtype`.
`FullFineTuning` selects every parameter that requires a gradient (all of them, as built). Another selection
(e.g. LoRA adapters with frozen base weights) is a second class with the same `select`. Left out: per-group
learning rates or weight decay.
"""
from __future__ import annotations

from typing import Protocol

import torch


class TrainableParams(Protocol):
    def select(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """The (name, parameter) pairs the optimizer updates; may freeze the rest of `model`."""
        ...


class FullFineTuning:
    """Every parameter with requires_grad (the whole model)."""

    def select(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
