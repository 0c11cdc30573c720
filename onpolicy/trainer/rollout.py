"""One step's rollouts: G seeded samples per prompt from the engine, flattened prompt-major.

Where rollouts come from is a `RolloutSource`: `collect(rows, step)` turns the step's prompt rows into the whole
step's `Rollout` (every rank gets all of it). `SingleTurnRollouts` samples one completion per request from the
engine, each rank its contiguous share of the prompts, gathered in rank order. A source whose completions hold
tokens the policy did not sample (environment observations of a multi-turn episode, `onpolicy.envs`) sets
`Rollout.loss_mask`: only the policy's tokens are scored -- the trainer computes logprobs at them alone, and
`sampler_logprobs`, `seq_lens`, the loss and the parity metrics count them alone; the others are context.
A subclass of `Rollout` may add per-sequence list fields (sliced and merged with the rest), reward inputs
(`reward_inputs`) and metrics of its own (`metrics`).
Seeds: completion group i of step s gets `sampling_seed(run_seed, s, i)`, so a resumed run (or the same
prompts in another batch) samples the same tokens. The engine numbers the G samples of a request 0..G-1 in
its counter-based hash, so the G samples differ. Left out: partial rollouts.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

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
    # per completion, bool over its tokens: False for tokens the policy did not sample (not scored at all: no
    # trainer logprob, no sampler logprob, not in the loss or the parity metrics); empty: all are the policy's
    loss_mask: list[torch.Tensor] = field(default_factory=list)

    @property
    def seq_lens(self) -> list[int]:
        """Scored tokens per completion: the policy's (all of them when `loss_mask` is empty)."""
        if not self.loss_mask:
            return [len(c) for c in self.completion_ids]
        return [int(m.sum()) for m in self.loss_mask]

    @property
    def score_masks(self) -> list[torch.Tensor] | None:
        """`loss_mask` for the trainer's forward (`sequence_logprobs`); None when every token is scored."""
        return self.loss_mask or None

    def reward_inputs(self, rows: list[dict]) -> tuple[list, list, dict]:
        """(prompts, completions, extra columns) the reward functions get (`rows`: the step's rows):
        `onpolicy.chat.reward_inputs` of the completion texts, no extra columns."""
        from onpolicy.chat import reward_inputs

        return (*reward_inputs([rows[i] for i in self.group_index], self.texts), {})

    @property
    def truncated(self) -> list[bool]:
        """Completions cut off by a length limit (`trainer.overlong_filter`)."""
        return [fr == "length" for fr in self.finish_reasons]

    @property
    def excluded(self) -> list[bool] | None:
        """Completions kept out of the loss whatever their reward (None: none)."""
        return None

    def metrics(self) -> dict:
        """Metrics of the rollout's own (a multi-turn rollout's `env/*`); none here."""
        return {}

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
    """The fields holding one entry per sequence: every list field (a subclass's too)."""
    return [f.name for f in dataclasses.fields(ro) if isinstance(getattr(ro, f.name), list)]


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    """Concatenate rank shares (in rank order) into the step's rollout, as one process would have made it."""
    names = _per_sequence_fields(parts[0])
    return dataclasses.replace(parts[0], **{n: [x for p in parts for x in getattr(p, n)] for n in names})


def sub_rollout(ro: Rollout, seqs: range) -> Rollout:
    """Sequences `seqs` (a contiguous range) of `ro`, of its own type."""
    s = slice(seqs.start, seqs.stop)
    return dataclasses.replace(ro, **{n: getattr(ro, n)[s] for n in _per_sequence_fields(ro)})


class RolloutSource(Protocol):
    def collect(self, rows: list[dict], step: int) -> Rollout:
        """The whole step's rollout for prompt `rows` (0-based `step`), the same on every rank."""
        ...


class SingleTurnRollouts:
    """One engine completion per request: `sampling.num_generations` seeded samples of each prompt row; each rank
    samples its contiguous share of the prompts (whole groups) and the shares are gathered in rank order, so
    every rank gets the rollout world size 1 makes."""

    def __init__(self, sampler, tokenizer, sampling, seed: int, dist):
        self.sampler, self.tokenizer, self.sampling, self.seed, self.dist = sampler, tokenizer, sampling, seed, dist

    @classmethod
    def for_trainer(cls, trainer) -> "SingleTurnRollouts":
        """The default source of a `Trainer`: its engine, tokenizer, sampling settings, seed and ranks."""
        return cls(trainer.sampler, trainer.tokenizer, trainer.cfg.sampling, trainer.cfg.trainer.seed, trainer.dist)

    def collect(self, rows: list[dict], step: int) -> Rollout:
        from onpolicy.chat import encode_prompt

        prompt_ids = [encode_prompt(self.tokenizer, r) for r in rows]
        mine = self.dist.share(range(len(prompt_ids)))
        with torch.no_grad():
            ro = generate_rollouts(self.sampler, prompt_ids[mine.start:mine.stop], self.sampling, run_seed=self.seed,
                                   step=step, first_index=mine.start)
        return merge_rollouts(self.dist.gather(ro)) if self.dist.world_size > 1 else ro
