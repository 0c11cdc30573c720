"""The `lora` config section: rank, scaling, target projections (PEFT names), where adapters start from.

`r: 0` (the default) means no adapters: every parameter trains (full fine-tuning). With `r > 0` the base
weights are frozen and only the adapters train. PEFT's names map onto onpolicy's fused projections
(`PEFT_TARGETS`): q/k/v are row blocks of `qkv_proj`, gate/up of `gate_up_proj`.
Left out: dropout (it would make the trainer's forward differ from the sampler's: only 0 is allowed), DoRA,
bias training, per-layer rank or alpha patterns, adapters on embeddings or the LM head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from onpolicy.config_fields import Section, config_field as _f

# PEFT target name -> (our module name under a decoder layer, row block of the fused projection or None)
PEFT_TARGETS = {
    "q_proj": ("self_attn.qkv_proj", "q"),
    "k_proj": ("self_attn.qkv_proj", "k"),
    "v_proj": ("self_attn.qkv_proj", "v"),
    "o_proj": ("self_attn.o_proj", None),
    "gate_proj": ("mlp.gate_up_proj", "gate"),
    "up_proj": ("mlp.gate_up_proj", "up"),
    "down_proj": ("mlp.down_proj", None),
}
ALL_LINEAR = tuple(PEFT_TARGETS)


@dataclass
class LoraArgs(Section):
    _name: ClassVar[str] = "lora"
    r: int = _f(0, "adapter rank; 0 = no adapters (every weight trains)", ge=0)
    alpha: float = _f(16.0, "scaling numerator: adapters add (alpha / r) * x @ A.T @ B.T (rsLoRA: alpha / sqrt(r))",
                      gt=0)
    target_modules: list[str] = _f(help="projections that get adapters, by their PEFT names",
                                   factory=lambda: list(ALL_LINEAR), choices=ALL_LINEAR)
    dropout: float = _f(0.0, "adapter dropout; only 0 (dropout would make the trainer's forward differ from the "
                        "sampler's)", allowed="0.0 (dropout breaks sampler/trainer parity)")
    use_rslora: bool = _f(False, "rank-stabilised scaling alpha / sqrt(r) instead of alpha / r")
    init_from: str | None = _f(None, "start from this PEFT adapter directory (adapter_config.json + "
                               "adapter_model.safetensors; its r, lora_alpha, use_rslora and target_modules must "
                               "match this section); null = PEFT's init (A Kaiming-uniform, B zero)", nonblank=True,
                               allowed="null or a PEFT adapter directory")
    save_merged: bool = _f(False, "also save the final policy with the adapters merged into the weights (HF format)")

    def _validate(self):
        self._check(self.dropout == 0.0, "dropout", "0.0 (dropout breaks sampler/trainer parity)")
        self._check(bool(self.target_modules) and len(set(self.target_modules)) == len(self.target_modules),
                    "target_modules", f"a non-empty list of distinct names from {', '.join(ALL_LINEAR)}")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    @property
    def scaling(self) -> float:
        """What the adapter product is multiplied by (PEFT's `scaling`)."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
