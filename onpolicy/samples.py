"""Sample completions of a run, to see what the model does: `SampleLog` (used by `RunLogger.log_samples`).

Every `logging.log_samples_every` steps (0 = never) the step's completions go to `<output_dir>/samples.jsonl`,
one JSON object each: step, group (prompt index within the step), prompt, completion, reward (the weighted
total), rewards (each reward by name), advantage, finish_reason. The console gets `logging.num_samples` of
them (the first completion of the first groups, text shortened to `CONSOLE_CHARS`), and W&B, when on, a table
`samples` of the same rows. A resumed run first drops the rows after the step it resumes from.
Left out: sampling which completions to keep (a logged step keeps all), token-level views.
"""
from __future__ import annotations

import json
from pathlib import Path

CONSOLE_CHARS = 120
COLUMNS = ("step", "group", "prompt", "completion", "reward", "advantage", "finish_reason")


def sample_rows(step: int, prompts: list[str], scored) -> list[dict]:
    """One row per completion of a `ScoredBatch` (`prompts`: the step's prompt texts, by group index)."""
    ro = scored.rollout
    by_name = getattr(scored, "reward_by_name", None) or {}
    first = min(ro.group_index) if ro.group_index else 0
    rows = []
    for i, text in enumerate(ro.texts):
        group = ro.group_index[i]
        rows.append({"step": step, "group": group, "prompt": prompts[group - first], "completion": text,
                     "reward": float(scored.rewards[i]),
                     "rewards": {k: None if v[i] is None else float(v[i]) for k, v in by_name.items()},
                     "advantage": float(scored.advantages[i]), "finish_reason": ro.finish_reasons[i]})
    return rows


def _short(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted if len(quoted) <= CONSOLE_CHARS else quoted[:CONSOLE_CHARS - 4] + '..."'


def console_lines(rows: list[dict], count: int) -> list[str]:
    """A header and up to `count` rows: the first completion of each of the first groups."""
    firsts = {}
    for r in rows:
        firsts.setdefault(r["group"], r)
    chosen = list(firsts.values())[:count]
    if not chosen:
        return []
    lines = [f"samples at step {rows[0]['step']} ({len(chosen)} of {len(rows)}; all in samples.jsonl):"]
    for r in chosen:
        lines.append(f"  reward {r['reward']:.3g} | adv {r['advantage']:+.3g} | {r['finish_reason']} | "
                     f"{_short(r['prompt'])} -> {_short(r['completion'])}")
    return lines


def wandb_table(wandb, rows: list[dict]):
    names = sorted({k for r in rows for k in r["rewards"]})
    table = wandb.Table(columns=list(COLUMNS) + [f"reward/{n}" for n in names])
    for r in rows:
        table.add_data(*[r[c] for c in COLUMNS], *[r["rewards"].get(n) for n in names])
    return table


class SampleLog:
    """`<output_dir>/samples.jsonl` (see module doc); `resume_step`: keep the rows up to it, else start afresh."""

    def __init__(self, output_dir: str | Path, every: int, resume_step: int | None = None):
        self.every = every
        self.path = Path(output_dir) / "samples.jsonl"
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines(keepends=True)
                    if line.strip() and _step_of(line) <= resume_step]
            self.path.write_text("".join(kept))

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def write(self, rows: list[dict]) -> None:
        with self.path.open("a") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, allow_nan=True) + "\n")


def _step_of(line: str) -> float:
    """A row's step; a line cut short by a kill counts as after every step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")
