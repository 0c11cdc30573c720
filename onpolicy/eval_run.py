"""Run an evaluation: load the held-out problems, sample them with the engine, score them (`onpolicy.evaluation`
holds the definitions). Used by recipes/eval.py and by the trainer (`trainer.eval_every`).

Held-out set: `data.eval_dataset` (read like `data.dataset`, split `data.eval_split`); null = the embedded
training task generated with seed `data.shuffle_seed + HELDOUT_SEED_OFFSET`, minus every prompt of the training
set. The first `eval.num_examples` problems are kept; a problem's id is its `id` column, else its index.
Reproducibility: sample j of problem p is seeded by (eval.seed, p's id, j) only -- the engine's counter-based
sampler numbers the n samples of a request -- so, on the invariant kernels, the results are the same bits for
any engine.max_num_seqs, max_num_batched_tokens, CPU thread count and world size (several processes: each rank
samples its contiguous share, every rank gets all records in problem order). Shares are ceil(n / world
size) problems (the last smaller). Left out: the same guarantee on the vLLM backend (its scheduler is its own);
the multi-process path is not covered by a test here.
"""
from __future__ import annotations

import dataclasses
import hashlib

from onpolicy.evaluation import HELDOUT_SEED_OFFSET, problem_record, summarize


def eval_seed(seed: int, problem_id: str) -> int:
    """A 62-bit request seed determined by (eval seed, problem id) only."""
    digest = hashlib.sha256(f"onpolicy-eval:{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def load_eval_rows(cfg, tokenizer, train_rows: list[dict] | None = None) -> list[dict]:
    """The held-out problems (see module doc), each with an "id"."""
    from onpolicy.data import load_prompts

    d = cfg.data
    embedded = d.eval_dataset is None
    args = dataclasses.replace(d, dataset=d.dataset if embedded else d.eval_dataset, split=d.eval_split,
                               num_examples=None if embedded else cfg.eval.num_examples,
                               shuffle_seed=d.shuffle_seed + HELDOUT_SEED_OFFSET if embedded else d.shuffle_seed)
    if embedded:
        seen = {r["prompt"] for r in (train_rows if train_rows is not None else load_prompts(d, tokenizer))}
        args = dataclasses.replace(args, num_examples=cfg.eval.num_examples + len(seen))
        rows = []
        for r in load_prompts(args, tokenizer):
            if r["prompt"] not in seen and len(rows) < cfg.eval.num_examples:
                seen.add(r["prompt"])
                rows.append(r)
        if not rows:
            raise ValueError(f"data.eval_dataset: null, and every held-out prompt of {d.dataset!r} is a training "
                             "prompt; allowed: a local held-out file, or a smaller data.num_examples")
    else:
        rows = load_prompts(args, tokenizer)
    out = [dict(r, id=str(r.get("id", i))) for i, r in enumerate(rows)]
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"data.eval_dataset: the `id` column must be unique; {len(ids) - len(set(ids))} repeat")
    return out


def _sampling_params(cfg, problem_id: str):
    from onpolicy.engine import SamplingParams

    s, e = cfg.sampling, cfg.eval
    return SamplingParams(n=e.num_samples, temperature=e.temperature, top_p=s.top_p, top_k=s.top_k,
                          max_tokens=s.max_tokens, stop=list(s.stop) or None,
                          stop_token_ids=list(s.stop_token_ids) or None, seed=eval_seed(e.seed, problem_id),
                          logprobs=False)


def score_problems(cfg, rows: list[dict], texts: list[list[str]], token_ids: list[list[list[int]]],
                   rewards) -> list[dict]:
    """Problem records (evaluation.problem_record) from each problem's completions; `rewards`: resolved
    `onpolicy.rewards.sources.Reward`s, called as in training (data columns, completion_ids)."""
    from onpolicy.chat import RESERVED_ROW_KEYS, reward_inputs
    from onpolicy.rewards import combine_rewards

    expanded = [r for r, t in zip(rows, texts) for _ in t]
    flat = [x for t in texts for x in t]
    skip = RESERVED_ROW_KEYS + ("completion", "completion_ids", "trainer_state")
    columns = {k: [r.get(k) for r in expanded] for k in rows[0] if k not in skip}
    prompts, completions = reward_inputs(expanded, flat)
    totals, per_name = combine_rewards(rewards, prompts, completions,
                                       completion_ids=[list(c) for ids in token_ids for c in ids], **columns)
    out, at = [], 0
    for row, t in zip(rows, texts):
        sl = slice(at, at + len(t))
        out.append(problem_record(row["id"], row, t, totals[sl], {k: v[sl] for k, v in per_name.items()},
                                  cfg.eval))
        at += len(t)
    return out


def _my_share(n: int, dist) -> range:
    if dist is None or dist.world_size == 1:
        return range(n)
    per = -(-n // dist.world_size)
    return range(min(n, dist.rank * per), min(n, (dist.rank + 1) * per))


def evaluate(cfg, llm, tokenizer, rows: list[dict], dist=None, rewards=None) -> tuple[list[dict], dict]:
    """(records in problem order, summary); `rewards`: resolved rewards (default: `cfg.rewards` resolved).
    Call inside `onpolicy.kernels.invariant_mode(...)` and no_grad."""
    from onpolicy.chat import encode_prompt
    from onpolicy.rewards import resolve_rewards

    rewards = resolve_rewards(cfg.rewards if rewards is None else rewards)

    mine = [rows[i] for i in _my_share(len(rows), dist)]
    records = []
    if mine:
        outputs = llm.generate([encode_prompt(tokenizer, r) for r in mine],
                               [_sampling_params(cfg, r["id"]) for r in mine])
        samples = [sorted(o.outputs, key=lambda c: c.index) for o in outputs]
        records = score_problems(cfg, mine, [[c.text for c in s] for s in samples],
                                 [[list(c.token_ids) for c in s] for s in samples], rewards)
    if dist is not None and dist.world_size > 1:
        records = [r for part in dist.gather(records) for r in part]
    return records, summarize(records, cfg.eval)


def run_evaluation(cfg, log=print) -> tuple[list[dict], dict, tuple]:
    """recipes/eval.py's work: checks, model and engine from `cfg`, evaluate, write eval.jsonl and
    eval_summary.json into `logging.output_dir`; returns (records, summary, (rows path, summary path))."""
    import torch

    from onpolicy import determinism, kernels
    from onpolicy.config import check_context
    from onpolicy.data import load_prompts
    from onpolicy.evaluation import check_eval_config, write_results
    from onpolicy.rewards import resolve_rewards
    from onpolicy.build import (attach_generation_settings, build_model, build_sampler, build_tokenizer,
                                check_stop_strings, load_reward_models, resolve_device)

    rewards = resolve_rewards(cfg.rewards)
    check_eval_config(cfg)
    check_context(cfg)
    t = cfg.trainer
    device = resolve_device(cfg.model.device)
    load_reward_models(rewards, device, log=lambda *a: None)
    determinism.enable(seed=t.seed, cpu_threads=t.num_threads if isinstance(t.num_threads, int) else -1)
    tokenizer = build_tokenizer(cfg)
    check_stop_strings(cfg, tokenizer)
    train_rows = load_prompts(cfg.data, tokenizer) if cfg.data.eval_dataset is None else None
    rows = load_eval_rows(cfg, tokenizer, train_rows)
    model = build_model(cfg, device, t.seed)
    attach_generation_settings(model, tokenizer, log=lambda *a: None)
    llm = build_sampler(cfg, model, tokenizer, device)
    with kernels.invariant_mode(t.invariant), torch.no_grad():
        records, summary = evaluate(cfg, llm, tokenizer, rows, rewards=rewards)
    summary = {**summary, "model": cfg.model.path, "temperature": cfg.eval.temperature, "seed": cfg.eval.seed}
    return records, summary, write_results(cfg.logging.output_dir, records, summary)
