"""LoRA for onpolicy: adapters on the model's own projections (unmerged, through `kernels` ops, so the sampler
and the trainer compute them identically), the `lora` config section, PEFT-format saving and loading."""
from onpolicy.lora.adapter import LoraAdapter, attach_lora, has_lora, iter_adapters
from onpolicy.lora.config import ALL_LINEAR, PEFT_TARGETS, LoraArgs
from onpolicy.lora.peft_io import attach_peft_adapter, load_adapter, merged_state, save_adapter, save_merged

__all__ = ["ALL_LINEAR", "LoraAdapter", "LoraArgs", "PEFT_TARGETS", "attach_lora", "attach_peft_adapter", "has_lora", "iter_adapters",
           "load_adapter", "merged_state", "save_adapter", "save_merged"]
