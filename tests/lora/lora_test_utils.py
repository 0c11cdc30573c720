"""LoRA test helpers: a tiny model with adapters whose B is random (so the adapters change the output), packing."""
import torch

from onpolicy.lora import LoraArgs, attach_lora, iter_adapters
from onpolicy.model.tiny import build_tiny


@torch.no_grad()
def randomize_adapters(model, seed: int = 0, std: float = 0.05) -> None:
    """B ~ N(0, std) (PEFT's init leaves B = 0: the adapters would add nothing)."""
    gen = torch.Generator().manual_seed(seed)
    for _, _, adapter in iter_adapters(model):
        adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=gen) * std)


def lora_tiny(dtype="bfloat16", targets=None, r=4, seed=1, **tiny):
    model, tok = build_tiny(seed=seed, dtype=dtype, **{"head_dim": 64, "num_hidden_layers": 2, **tiny})
    args = LoraArgs(r=r, alpha=8.0, **({} if targets is None else {"target_modules": targets}))
    attach_lora(model, args, seed=seed)
    randomize_adapters(model, seed)
    return model.eval(), tok, args


def packed(seqs, device="cpu"):
    """(input_ids, positions, training metadata) for sequences packed back to back."""
    from onpolicy.model import AttentionMetadata

    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64, device=device)
    pos = torch.tensor([p for s in seqs for p in range(len(s))], dtype=torch.int64, device=device)
    lens = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0).to(torch.int32)
    return ids, pos, AttentionMetadata.for_training(lens.to(device))
