"""The end-of-run summary dict and its one console line. NaN-aware: a parity maximum over steps with a
non-finite value is NaN (Python's `max` would silently skip or keep a NaN depending on its position), and the
line names the steps that went non-finite. Left out: per-reward breakdowns (they are in metrics.jsonl)."""
from __future__ import annotations

import math
import os

from onpolicy.trainer.health import no_signal_since

WINDOW = 10  # steps averaged for the summary's start/end reward (one step's 16 prompts are noisy)
PARITY_MAX = {"max_abs_kl": "onpolicy/kl", "max_logprob_diff": "onpolicy/logprob_diff/max",
              "max_mismatch_frac": "onpolicy/mismatch_frac"}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def max_abs(values: list[float]) -> float:
    """max |v|, NaN if any value is NaN, 0.0 for no values."""
    vals = [abs(v) for v in values]
    return float("nan") if any(math.isnan(v) for v in vals) else max(vals, default=0.0)


def nonfinite_steps(history: list[dict]) -> list[int]:
    return [m["step"] for m in history
            if any(isinstance(v, float) and not math.isfinite(v) for k, v in m.items() if not k.startswith("time/"))]


def summarize(history: list[dict], wall: float, trainer, final_policy: str | None = None,
              stopped: str | None = None) -> dict:
    rewards = [m["reward/mean"] for m in history if "reward/mean" in m]
    out = {
        "steps": len(history),
        "start_step": trainer.start_step,
        "wall_time_s": wall + trainer.setup_time,
        "rl_time_s": wall,
        "reward_first": rewards[0] if rewards else float("nan"),
        "reward_last": rewards[-1] if rewards else float("nan"),
        f"reward_first{WINDOW}": _mean(rewards[:WINDOW]),
        f"reward_last{WINDOW}": _mean(rewards[-WINDOW:]),
    }
    for name, key in PARITY_MAX.items():
        out[name] = max_abs([m[key] for m in history if key in m])
    out.update({"nonfinite_steps": nonfinite_steps(history), "no_signal_since": no_signal_since(history),
                "stopped": stopped, "final_policy": final_policy,
                "output_dir": os.path.abspath(trainer.cfg.logging.output_dir), "history": history})
    return out


def format_summary(s: dict) -> str:
    head = f"stopped: {s['stopped']}; " if s.get("stopped") else "done: "
    bad = f" (non-finite values at steps {s['nonfinite_steps']})" if s.get("nonfinite_steps") else ""
    if s.get("no_signal_since") is not None:
        bad += f" (no learning signal since step {s['no_signal_since']}: collapsed?)"
    policy = f"final policy (transformers-loadable) in {s['final_policy']}; " if s.get("final_policy") else ""
    return (f"{head}{s['steps']} steps in {s['wall_time_s']:.1f}s (RL {s['rl_time_s']:.1f}s); reward "
            f"{s['reward_first']:.3f} -> {s['reward_last']:.3f} (mean of first/last {WINDOW} steps: "
            f"{s[f'reward_first{WINDOW}']:.3f} -> {s[f'reward_last{WINDOW}']:.3f}); max |onpolicy/kl| "
            f"{s['max_abs_kl']!r}, max |logprob diff| {s['max_logprob_diff']!r}, max mismatch_frac "
            f"{s['max_mismatch_frac']!r}{bad}; {policy}outputs in {s['output_dir']}")
