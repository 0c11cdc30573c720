"""The in-process side channel between the adapter, the vLLM model and the logits processor.

vLLM builds the model and the logits processor itself; all three look up one `Channel` by the id that the
adapter writes into the checkpoint's config.json (`onpolicy_channel`). It carries our ModelConfig in, the
built model out, each step's sampled hidden rows from `compute_logits` to the processor, and the
(token, logprob) the processor recorded for every (request key, output position). Left out: anything that
crosses a process boundary (the backend needs VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

_COUNTER = itertools.count()
CHANNELS: dict[int, "Channel"] = {}


@dataclass
class Channel:
    model_config: Any                                   # onpolicy.model.ModelConfig of the policy
    model: torch.nn.Module | None = None                # the vLLM-side CausalLM, set when vLLM builds it
    hidden: torch.Tensor | None = None                  # [M, H] rows behind this step's logits
    records: dict[tuple[str, int], tuple[int, float | None]] = field(default_factory=dict)
    # forward steps, tokens computed, and tokens a multi-token (prefill) chunk found already cached: prefix-cache
    # hits or earlier chunks of a chunked prefill
    stats: dict[str, int] = field(default_factory=lambda: {"steps": 0, "forward_tokens": 0, "prefill_cached_tokens": 0})


def open_channel(model_config) -> int:
    cid = next(_COUNTER)
    CHANNELS[cid] = Channel(model_config)
    return cid


def get_channel(cid: int) -> Channel:
    if cid not in CHANNELS:
        raise RuntimeError(f"onpolicy vLLM backend: no channel {cid}; the model must be built by VllmLLM in this "
                           "process (set VLLM_ENABLE_V1_MULTIPROCESSING=0)")
    return CHANNELS[cid]


def channel_id(hf_config) -> int:
    cid = getattr(hf_config, "onpolicy_channel", None)
    if cid is None:
        raise RuntimeError("onpolicy vLLM backend: config.json has no onpolicy_channel; build the engine with VllmLLM")
    return int(cid)
