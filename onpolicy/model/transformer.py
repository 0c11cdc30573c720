"""CausalLM: one decoder written once on `kernels/` ops, for both the sampler and the trainer, for every family
in `architectures.ARCHITECTURES` (layers in `layers.py`).

Two call modes of one module (see docs/architecture.md): training (`kv_caches=None`: attention over the
packed fresh k/v with `kernels.attention_varlen`, autograd) and engine (k/v written into each layer's slot
cache at `meta.slot_mapping`, then `kernels.attention` over the cache). Every matmul, norm, RoPE, activation
and attention is a `kernels` op; each residual add runs inside the norm after it (`kernels.add_rms_norm`;
with activation checkpointing the add closing a layer is a torch add; post-norm families add plainly), q/k
norm + RoPE in `kernels.qk_norm_rope`. The fp32 rope tables (any supported rope scaling; Gemma's local and
global) are indexed by position, and a layer's sliding window is a kernel argument, so nothing a token computes
depends on its batch. Sparse MoE MLPs (Qwen3-MoE) route and combine with batch-invariant ops (`moe.py`).
Left out: dropout, MLP bias, logit soft-capping, tensor parallelism.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from onpolicy import kernels
from onpolicy.profiling import phase
from onpolicy.model.config import ModelConfig
from onpolicy.kernels.attention import TRAINING_BLOCK_SIZE
from onpolicy.model.layers import LAYERS, DecoderLayer, RMSNorm, _param
from onpolicy.model.metadata import AttentionMetadata
from onpolicy.model.rope_scaling import build_rope_table


def _layer_with_add(layer: DecoderLayer, h, positions, rope_tables, meta):
    """One decoder layer with its last residual add done (the unit activation checkpointing saves: one tensor)."""
    h, delta = layer(h, None, positions, rope_tables, meta)
    return h if delta is None else h + delta


@contextlib.contextmanager
def _recompute_context(invariant: bool):
    """Where a checkpointed layer is recomputed in backward: the forward's kernels mode, in a profiler scope."""
    with kernels.invariant_mode(invariant), phase("recompute"):
        yield


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = _param((cfg.vocab_size, cfg.hidden_size), cfg.torch_dtype)
        layer = LAYERS[cfg.arch.norm_placement]
        self.layers = nn.ModuleList(layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.torch_dtype, cfg.arch.norm_offset)


class CausalLM(nn.Module):
    """Decoder-only LM. `forward` returns the final-normed hidden states; logits/logprobs come from
    `token_logprobs` / `logits` so the vocab projection is one kernel shared by sampler and trainer.

    `init=True` fills the weights with `init_weights(self, seed=0)` (std 0.02 normal); `init=False` leaves
    them uninitialised for a checkpoint to fill.
    `activation_checkpointing = True` (training mode, grad enabled) keeps only each decoder layer's input and
    recomputes the layer in backward (torch.utils.checkpoint, use_reentrant=False): same kernels, same bits.
    """

    def __init__(self, config: ModelConfig, init: bool = True):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"CausalLM: config must be a ModelConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Module()
            self.lm_head.weight = _param((config.vocab_size, config.hidden_size), config.torch_dtype)
        self._rope_tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self.activation_checkpointing = False
        # Gemma: embeddings times sqrt(hidden_size) rounded to the model dtype, as HF does; a python float
        # (exactly that value), so no tensor is made in the forward (CUDA-graph capture)
        self._embed_scale = None
        if config.arch.embed_scale:
            self._embed_scale = float(torch.tensor(config.hidden_size ** 0.5).to(config.torch_dtype))
        if init:
            init_weights(self, seed=0)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope_table(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The fp32 [max_position_embeddings, head_dim] cos|sin tables, one per rope setting (index 0: the
        model's; 1: Gemma's local layers'), built once per device (outside inference mode so training may reuse
        them; build them before CUDA-graph capture)."""
        device = torch.device(device)
        tables = self._rope_tables.get(device)
        if tables is None:
            with torch.inference_mode(False):
                c = self.config
                tables = (build_rope_table(c, device),)
                if c.rope_local_theta is not None:
                    tables += (kernels.rope_cache(c.max_position_embeddings, c.head_dim, c.rope_local_theta, device),)
            self._rope_tables[device] = tables
        return tables

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """input_ids/positions [T] -> hidden [T, H]. `meta` is validated once here (one host sync, skipped
        during CUDA-graph capture); positions must be < max_position_embeddings and slots must lie in the
        caches (not checked)."""
        self._check_inputs(input_ids, positions, meta, kv_caches)
        rope_table = self.rope_table(input_ids.device)
        h = F.embedding(input_ids, self.model.embed_tokens.weight)
        if self._embed_scale is not None:
            h = h * self._embed_scale
        recompute = self.activation_checkpointing and kv_caches is None and torch.is_grad_enabled()
        # The recompute runs in the backward, on autograd's device thread for CUDA, which does not see this
        # thread's kernels.invariant_mode (a contextvar): re-enter the forward's mode there.
        mode = kernels.is_invariant()
        context_fn = lambda: (contextlib.nullcontext(), _recompute_context(mode))  # noqa: E731
        delta = None  # the last layer's MLP output, added to h by the next norm (add_rms_norm)
        for i, layer in enumerate(self.model.layers):
            if recompute:
                h = checkpoint(_layer_with_add, layer, h, positions, rope_table, meta, use_reentrant=False,
                               context_fn=context_fn)
            else:
                h, delta = layer(h, delta, positions, rope_table, meta, None if kv_caches is None else kv_caches[i])
        return self.model.norm(h) if delta is None else self.model.norm.add_forward(delta, h)[1]

    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return kernels.token_logprobs(hidden, self.lm_head_weight, targets, temperature)

    def logits(self, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return kernels.lm_logits(hidden, self.lm_head_weight, temperature)

    def logits_logprobs(self, logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """`token_logprobs` (same bits) from `logits = self.logits(hidden, temperature)`: no second LM-head pass."""
        return kernels.logits_token_logprobs(logits, targets, temperature, self.lm_head_weight.dtype)

    def _check_inputs(self, input_ids, positions, meta, kv_caches) -> None:
        def bad(msg):
            raise ValueError(f"CausalLM.forward: {msg}")

        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 1 or input_ids.dtype not in (torch.int32, torch.int64):
            bad("input_ids must be a 1-D int32/int64 tensor [T]")
        if not isinstance(positions, torch.Tensor) or positions.shape != input_ids.shape or positions.dtype not in (torch.int32, torch.int64):
            bad(f"positions must be an int32/int64 tensor of input_ids' shape {tuple(input_ids.shape)}")
        if not isinstance(meta, AttentionMetadata):
            bad(f"meta must be an AttentionMetadata, got {type(meta).__name__}")
        if kv_caches is None and meta.block_size != TRAINING_BLOCK_SIZE:
            bad("training mode (kv_caches=None) needs AttentionMetadata.for_training(cu_seqlens)")
        meta.validate(input_ids.shape[0])
        if kv_caches is None:
            return
        n_layers = self.config.num_hidden_layers
        if not isinstance(kv_caches, (list, tuple)) or len(kv_caches) != n_layers:
            bad(f"kv_caches must be None or a list of {n_layers} (k_cache, v_cache) pairs")
        if meta.slot_mapping is None or meta.slot_mapping.shape != input_ids.shape:
            bad("meta.slot_mapping must be an int64 tensor [T] in engine mode (kv_caches given)")
        want = (self.config.num_key_value_heads, self.config.head_dim)
        k0 = kv_caches[0][0]
        if k0.dim() != 3 or tuple(k0.shape[1:]) != want:
            bad(f"kv_caches tensors must be [num_slots, {want[0]}, {want[1]}], got {tuple(k0.shape)}")
        if k0.dtype != self.model.embed_tokens.weight.dtype:
            bad(f"kv_caches dtype {k0.dtype} must equal the model dtype {self.model.embed_tokens.weight.dtype}")


@torch.no_grad()
def init_weights(model: CausalLM, seed: int = 0, std: float = 0.02) -> CausalLM:
    """Deterministic init: matrices ~ N(0, std) from a seeded CPU generator (fp32, then cast, so the values
    do not depend on the device), norms = 1 (Gemma's (1 + w) norms: w = 0), biases = 0. Parameters are visited in
    `named_parameters` order."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    norm = 0.0 if model.config.arch.norm_offset else 1.0  # (1 + w) norms start at w = 0
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(norm if name.endswith("norm.weight") else 0.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std))
    return model
