"""sequence_logprobs: the trainer's side of the parity check -- one packed training forward.

Each prompt+completion pair is packed into one varlen batch (positions restart at 0 per sequence); the hidden
state at the position before each completion token is scored with `model.token_logprobs`, the same op the
sampler uses. `score_masks` (multi-turn trajectories) scores only the completion tokens marked True (the
model's own; an environment's observation tokens are context only). Left out: micro-batching (the caller
splits big batches), padding, loss computation.
"""
from __future__ import annotations

import torch

from onpolicy.model.metadata import AttentionMetadata
from onpolicy.profiling import phase


def pack_sequences(prompts: list[list[int]], completions: list[list[int]], device, score_masks=None) -> tuple:
    """-> (input_ids int64 [T], positions int64 [T], cu_seqlens int32 [B+1], score_rows int64 [N],
    targets int64 [N], counts list[int]) where row score_rows[j] predicts targets[j]; with `score_masks`
    (one bool list or tensor per completion) only the marked completion tokens are scored."""
    if not isinstance(prompts, (list, tuple)) or not isinstance(completions, (list, tuple)):
        raise ValueError("sequence_logprobs: prompts and completions must be lists of token-id lists")
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"sequence_logprobs: prompts ({len(prompts)}) and completions ({len(completions)}) "
                         "must be non-empty lists of equal length")
    if score_masks is not None and len(score_masks) != len(completions):
        raise ValueError(f"sequence_logprobs: score_masks ({len(score_masks)}) and completions ({len(completions)}) "
                         "must have equal length")
    ids, positions, cu, rows, targets, counts = [], [], [0], [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p, c = list(p), list(c)
        if not p:
            raise ValueError(f"sequence_logprobs: prompts[{i}] is empty; every prompt needs >= 1 token")
        start = cu[-1]
        seq = p + c
        ids += seq
        positions += range(len(seq))
        if score_masks is None:
            rows += range(start + len(p) - 1, start + len(seq) - 1)
            targets += c
            counts.append(len(c))
        else:
            mask = torch.as_tensor(score_masks[i], dtype=torch.bool)
            keep = mask.nonzero().flatten().tolist()
            if mask.numel() != len(c):
                raise ValueError(f"sequence_logprobs: score_masks[{i}] has {mask.numel()} entries for "
                                 f"{len(c)} completion tokens")
            rows += [start + len(p) - 1 + j for j in keep]
            targets += [c[j] for j in keep]
            counts.append(len(keep))
        cu.append(start + len(seq))
    as_long = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    return (as_long(ids), as_long(positions), torch.tensor(cu, dtype=torch.int32, device=device),
            as_long(rows), as_long(targets), counts)


def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]],
                      temperature: float = 1.0, score_masks=None) -> list[torch.Tensor]:
    """fp32 logprob of every completion token -- or of those `score_masks` marks -- (one tensor per pair; grad
    flows when grad is enabled)."""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"sequence_logprobs: temperature must be a number > 0, got {temperature!r}")
    device = model.lm_head_weight.device
    ids, positions, cu, rows, targets, counts = pack_sequences(prompts, completions, device, score_masks)
    vocab = model.config.vocab_size
    lo, hi, max_pos = torch.stack([ids.min(), ids.max(), positions.max()]).tolist()  # ids is never empty; one sync
    if lo < 0 or hi >= vocab:
        raise ValueError(f"sequence_logprobs: token ids must lie in [0, {vocab}) (the model's vocab_size)")
    if max_pos >= model.config.max_position_embeddings:
        raise ValueError(f"sequence_logprobs: a prompt+completion is longer than max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    hidden = model(ids, positions, AttentionMetadata.for_training(cu))
    with phase("logprobs"):
        logprobs = model.token_logprobs(hidden[rows], targets, float(temperature))
    return list(torch.split(logprobs, counts))
