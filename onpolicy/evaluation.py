"""Held-out evaluation: the `eval` config section, per-problem scoring, accuracy, unbiased pass@k, summaries,
eval.jsonl files and their comparison. Generation lives in `onpolicy.eval_run` (used by recipes/eval.py and by
the trainer's `trainer.eval_every`).

Definitions (one problem = one held-out prompt, `eval.num_samples` = n samples each):
- a sample is *correct* when its reward -- the reward named `eval.correct_reward`, or the weighted total when
  that is null -- is >= `eval.correct_threshold`; c = the problem's correct samples;
- `accuracy` = mean over problems of c / n (with n = 1 and temperature 0: the greedy accuracy);
- `pass@k` = mean over problems of 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, unbiased), computed exactly with
  integer binomials and one rounding to float;
- `reward/mean` = the mean weighted total over every sample; `reward/<label>` the mean of each configured reward
  over the samples it applies to (a reward's None means "does not apply"; such a sample is not correct by it);
- in `compare_results`, a problem counts as solved when more than half of its samples are correct.
Left out: per-problem timeouts, confidence intervals.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

from onpolicy.config_fields import ConfigError, Section, config_field as _f

HELDOUT_SEED_OFFSET = 1_000_003  # embedded held-out split: generated with data.shuffle_seed + this


@dataclass
class EvalArgs(Section):
    _name: ClassVar[str] = "eval"
    num_samples: int = _f(1, "samples per held-out problem (n of pass@k)", ge=1)
    temperature: float = _f(0.0, "sampling temperature of the evaluation (0 = greedy); top_p, top_k, max_tokens "
                                 "and stop come from the sampling section", ge=0)
    pass_k: list[int] = _f(help="k values of the reported pass@k, each in [1, num_samples]", factory=lambda: [1])
    num_examples: int = _f(256, "held-out problems evaluated (the first N of the held-out set)", ge=1)
    seed: int = _f(0, "evaluation seed: sample j of problem p is seeded by (seed, p's id, j) only", ge=0)
    correct_reward: str | None = _f(None, "reward whose value decides correctness (its label: the registered name, function "
                                          "name or reward-model directory name); "
                                          "null = the weighted total")
    correct_threshold: float = _f(1.0, "a sample is correct when its reward is >= this")

    def _validate(self):
        from onpolicy.engine.params import MIN_TEMPERATURE

        self._check(self.temperature == 0 or self.temperature >= MIN_TEMPERATURE, "temperature",
                    f"0 (greedy) or a float >= {MIN_TEMPERATURE:g}")
        self._check(bool(self.pass_k) and all(1 <= k <= self.num_samples for k in self.pass_k), "pass_k",
                    f"a non-empty list of ints in [1, eval.num_samples={self.num_samples}]")
        self._check(self.temperature > 0 or self.num_samples == 1, "num_samples",
                    "1 when eval.temperature is 0 (greedy samples are all the same)")


def check_eval_config(cfg) -> None:
    """Checks across sections, before any compute: a held-out set exists, `eval.correct_reward` is a reward."""
    if cfg.data.eval_dataset is None and not cfg.data.dataset.startswith("embedded:"):
        raise ConfigError("data.eval_dataset: null needs an embedded training task (its held-out split); allowed "
                          "here: a local json/jsonl/parquet/csv file or save_to_disk dir")
    from onpolicy.rewards import resolve_rewards

    names = [r.label for r in resolve_rewards(cfg.rewards)]
    if cfg.eval.correct_reward is not None and cfg.eval.correct_reward not in names:
        raise ConfigError(f"eval.correct_reward: got {cfg.eval.correct_reward!r}; allowed: null or one of "
                          f"{', '.join(names)}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples: 1 - C(n-c, k) / C(n, k), exact then rounded."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def problem_record(problem_id: str, row: dict, completions: list[str], totals: list[float],
                   by_name: dict[str, list[float]], eval_args) -> dict:
    """One eval.jsonl row: the problem's completions, rewards and which samples are correct."""
    judged = by_name[eval_args.correct_reward] if eval_args.correct_reward else totals
    correct = [v is not None and v >= eval_args.correct_threshold for v in judged]
    return {"id": problem_id, "prompt": row["prompt"], "answer": row.get("answer"), "completions": completions,
            "rewards": totals, "rewards_by_name": by_name, "correct": correct, "num_correct": sum(correct),
            "num_samples": len(completions)}


def summarize(records: list[dict], eval_args) -> dict:
    """accuracy, pass@k, reward means (the `eval/*` metrics without prefix) of a list of problem records."""
    if not records:
        raise ValueError("evaluation: no problems to summarize")
    n = records[0]["num_samples"]
    out = {"num_problems": len(records), "num_samples": n,
           "accuracy": sum(r["num_correct"] / r["num_samples"] for r in records) / len(records)}
    for k in eval_args.pass_k:
        out[f"pass@{k}"] = sum(pass_at_k(r["num_samples"], r["num_correct"], k) for r in records) / len(records)
    all_rewards = [v for r in records for v in r["rewards"]]
    out["reward/mean"] = sum(all_rewards) / len(all_rewards)
    for name in records[0]["rewards_by_name"]:
        vals = [v for r in records for v in r["rewards_by_name"][name] if v is not None]  # None: n/a
        if vals:
            out[f"reward/{name}"] = sum(vals) / len(vals)
    return out


def summary_line(summary: dict, temperature: float) -> str:
    keys = ["accuracy"] + sorted(k for k in summary if k.startswith("pass@")) + ["reward/mean"]
    body = " | ".join(f"{k} {summary[k]:.4f}" for k in keys)
    return f"eval: {summary['num_problems']} problems x {summary['num_samples']} samples (temperature " \
           f"{temperature:g}) | {body}"


def write_results(output_dir, records: list[dict], summary: dict) -> tuple[Path, Path]:
    """`<output_dir>/eval.jsonl` (one row per problem, in problem order) and `eval_summary.json`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path, summary_path = out / "eval.jsonl", out / "eval_summary.json"
    rows_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return rows_path, summary_path


def read_results(path) -> dict[str, dict]:
    """eval.jsonl -> {problem id: row}; a missing file or a row without id/num_correct raises ValueError."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--compare: file not found: {str(p)!r}")
    out = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--compare: {str(p)!r} line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not {"id", "num_correct", "num_samples"} <= set(row):
            raise ValueError(f"--compare: {str(p)!r} line {n}: not an eval.jsonl row (needs id, num_correct, "
                             "num_samples)")
        out[str(row["id"])] = row
    return out


def _solved(row: dict) -> bool:
    return 2 * row["num_correct"] > row["num_samples"]


def compare_results(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Problems (by id, in `before`'s order) that flipped between two eval files, and the counts."""
    common = [pid for pid in before if pid in after]
    fixed = [pid for pid in common if not _solved(before[pid]) and _solved(after[pid])]
    broken = [pid for pid in common if _solved(before[pid]) and not _solved(after[pid])]
    changed = [pid for pid in common if before[pid]["num_correct"] != after[pid]["num_correct"]]
    return {"common": len(common), "only_before": len([p for p in before if p not in after]),
            "only_after": len([p for p in after if p not in before]), "fixed": fixed, "broken": broken,
            "num_correct_changed": changed,
            "solved_before": sum(_solved(before[p]) for p in common),
            "solved_after": sum(_solved(after[p]) for p in common)}


def compare_lines(diff: dict, name_before: str, name_after: str) -> list[str]:
    lines = [f"compare: {name_before} -> {name_after}: {diff['common']} common problems, solved "
             f"{diff['solved_before']} -> {diff['solved_after']}; fixed {len(diff['fixed'])}, broken "
             f"{len(diff['broken'])}, num_correct changed on {len(diff['num_correct_changed'])}"]
    if diff["only_before"] or diff["only_after"]:
        lines.append(f"  problems only in {name_before}: {diff['only_before']}, only in {name_after}: "
                     f"{diff['only_after']}")
    for label in ("fixed", "broken"):
        if diff[label]:
            lines.append(f"  {label} ({'incorrect -> correct' if label == 'fixed' else 'correct -> incorrect'}): "
                         + ", ".join(diff[label]))
    return lines
