"""OnpolicyLogitsProcessor: our counter-based sampler and our logprobs decide every token vLLM emits.

A vLLM V1 logits processor sees each batch row's request (its SamplingParams, whose `extra_args["onpolicy"]`
carries our sampling fields, seed, sample index and request key) and its live output-token list (so the
output position is its length). `apply` runs `sampling.sample_hidden` -- the native engine's own code: our fp32
logits from `model.logits`, `sampling.sample`, `model.logits_logprobs` -- on the hidden rows that
`compute_logits` stashed in the channel, records (token, logprob) under (request key, position), and masks
every other token to -inf, so vLLM's greedy argmax (each request is sent with temperature 0) can only return
our token. Rows of a partially prefilled prompt are sampled too; vLLM discards them, and the final chunk's
record overwrites theirs. Left out: rows without our extra_args are left untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor

from onpolicy.engine.params import SamplingParams
from onpolicy.engine.sampling import sample_hidden
from onpolicy.engine.vllm_backend.channel import channel_id, get_channel

EXTRA_KEY = "onpolicy"


@dataclass
class _Row:
    """What `sample_hidden` reads from a native Sequence."""

    key: str
    params: SamplingParams
    seed: int
    index: int
    outputs: list[int]

    @property
    def num_output(self) -> int:
        return len(self.outputs)


def _row(vllm_params, prompt_ids, output_ids) -> _Row | None:
    extra = (vllm_params.extra_args or {}).get(EXTRA_KEY)
    if extra is None:
        return None
    params = SamplingParams(temperature=extra["temperature"], top_p=extra["top_p"], top_k=extra["top_k"],
                            logprobs=extra["logprobs"])
    return _Row(extra["key"], params, extra["seed"], extra["index"], output_ids)


class OnpolicyLogitsProcessor(LogitsProcessor):
    """Registered through `LLM(logits_processors=[OnpolicyLogitsProcessor])`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.channel = get_channel(channel_id(vllm_config.model_config.hf_config))
        self.rows: dict[int, _Row] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        return None

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax: vLLM must apply it before greedy sampling

    def update_state(self, batch_update) -> None:
        from vllm.v1.sample.logits_processor.builtin import process_dict_updates

        process_dict_updates(self.rows, batch_update, _row)

    @torch.inference_mode()
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        hidden = self.channel.hidden
        if hidden is None or hidden.shape[0] != logits.shape[0]:
            raise RuntimeError(f"OnpolicyLogitsProcessor: {logits.shape[0]} logits rows but the model stashed "
                               f"{None if hidden is None else hidden.shape[0]} hidden rows")
        idx = sorted(i for i in self.rows if i < logits.shape[0])
        rows = [self.rows[i] for i in idx]
        tokens, logprobs = sample_hidden(self.channel.model, hidden[torch.tensor(idx, device=hidden.device)], rows)
        mask = torch.full((len(idx), logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        mask[torch.arange(len(idx), device=logits.device), torch.tensor(tokens, device=logits.device)] = 0.0
        logits[torch.tensor(idx, device=logits.device)] = mask
        for r, tok, lp in zip(rows, tokens, logprobs):
            self.channel.records[(r.key, r.num_output)] = (tok, lp)
        return logits
