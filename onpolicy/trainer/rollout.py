"""One step's rollouts: G seeded samples per prompt from the engine, flattened prompt-major.

Seeds: completion group i of step s gets `sampling_seed(run_seed, s, i)`, so a resumed run (or the same
prompts in another batch) samples the same tokens. The engine numbers the G samples of a request 0..G-1 in
its counter-based hash, so the G samples differ. Multi-turn and tool rollouts: `onpolicy.envs` (their
`EnvRollout` is a Rollout). Left out: partial rollouts.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import torch


def sampling_seed(run_seed: int, step: int, prompt_index: int) -> int:
    """A 62-bit seed determined by (run seed, step, prompt index) only."""
    digest = hashlib.sha256(f"onpolicy:{run_seed}:{step}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


@dataclass
class Rollout:
    """Flat lists of length N * G (prompt-major: prompt 0's G samples first)."""

    group_size: int
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    sampler_logprobs: list[torch.Tensor] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    group_index: list[int] = field(default_factory=list)
    # which completion tokens are the model's (scored, in the loss); None: all. Multi-turn rollouts
    # (onpolicy.envs) mark the environment's observation tokens False; seq_lens then count the model's.
    score_masks: list[list[bool]] | None = None

    @property
    def seq_lens(self) -> list[int]:
        """Scored tokens per sequence: every completion token, or the model's (`score_masks`)."""
        if self.score_masks is None:
            return [len(c) for c in self.completion_ids]
        return [sum(m) for m in self.score_masks]

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)


def generate_rollouts(llm, prompt_ids: list[list[int]], sampling, *, run_seed: int, step: int,
                      first_index: int = 0) -> Rollout:
    """Sample `sampling.num_generations` completions per prompt (logprobs at `sampling.temperature`) and flatten
    them; `sampling` is the config's `SamplingArgs` section. `first_index`: the step-wide index of
    prompt_ids[0] (a rank's share), used for the seeds and `group_index`."""
    from onpolicy.engine import SamplingParams

    group_size = sampling.num_generations
    params = [SamplingParams(n=group_size, temperature=sampling.temperature, top_p=sampling.top_p,
                             top_k=sampling.top_k, max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None,
                             stop_token_ids=list(sampling.stop_token_ids) or None,
                             seed=sampling_seed(run_seed, step, first_index + i), logprobs=True)
              for i in range(len(prompt_ids))]
    outputs = llm.generate(prompt_ids, params)
    if len(outputs) != len(prompt_ids):
        raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    ro = Rollout(group_size=group_size)
    for i, (ids, req) in enumerate(zip(prompt_ids, outputs)):
        if len(req.outputs) != group_size:
            raise RuntimeError(f"engine returned {len(req.outputs)} samples for prompt {i}, expected {group_size}")
        for comp in sorted(req.outputs, key=lambda c: c.index):
            if comp.logprobs is None or comp.logprobs.numel() != len(comp.token_ids):
                raise RuntimeError(f"prompt {i} sample {comp.index}: sampler logprobs missing or of wrong length")
            ro.prompt_ids.append(list(ids))
            ro.completion_ids.append(list(comp.token_ids))
            ro.sampler_logprobs.append(comp.logprobs.detach().float().cpu())
            ro.texts.append(comp.text)
            ro.finish_reasons.append(comp.finish_reason)
            ro.group_index.append(first_index + i)
    return ro


def _per_sequence_fields(ro: Rollout) -> list[str]:
    """The fields holding one entry per sequence (every list field; subclasses such as the multi-turn
    `onpolicy.envs.trajectory.EnvRollout` add their own)."""
    return [f.name for f in dataclasses.fields(ro) if isinstance(getattr(ro, f.name), list)]


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    """Concatenate rank shares (in rank order) into the step's rollout, as one process would have made it."""
    names = _per_sequence_fields(parts[0])
    return dataclasses.replace(parts[0], **{n: [x for p in parts for x in getattr(p, n)] for n in names})


def sub_rollout(ro: Rollout, seqs: range) -> Rollout:
    """Sequences `seqs` (a contiguous range) of `ro`, of its own type."""
    s = slice(seqs.start, seqs.stop)
    return dataclasses.replace(ro, **{n: getattr(ro, n)[s] for n in _per_sequence_fields(ro)})
