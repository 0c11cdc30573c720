"""PLACEHOLDER: reference-only silu_mul."""
import torch
import torch.nn.functional as F


def silu_mul_reference(gate, up):
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


silu_mul = silu_mul_reference
