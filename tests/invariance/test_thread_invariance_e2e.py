"""The embedded default (configs/tiny-cpu.yaml, shortened) gives bitwise identical metrics.jsonl -- every field
but timings -- with 1 and with 2 torch threads, and with `trainer.num_threads: auto` switching between 1 and 2
after every SFT and RL step, its SFT warm-start included (each run trains its own)."""
import json
from pathlib import Path

import torch

from onpolicy.trainer import cpu_threads

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
TIMING = ("time/", "throughput/")


def _run(out_dir: Path, threads: int | str):
    from onpolicy.config import parse_args
    from onpolicy.trainer import train

    overrides = {"trainer.num_threads": str(threads),
                 "trainer.steps": "2", "trainer.sft_warmup_steps": "30", "trainer.prompts_per_step": "8",
                 "sampling.num_generations": "4",
                 "logging.output_dir": str(out_dir / "run"), "logging.plot": "false"}
    argv = ["--config", str(CONFIG)] + [x for k, v in overrides.items() for x in (f"--{k}", v)]
    old = torch.get_num_threads()
    try:
        train(parse_args(argv), log=lambda *a: None)
        assert threads == "auto" or torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(old)
    rows = [json.loads(line) for line in open(out_dir / "run" / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_tiny_default_same_metrics_with_1_and_2_threads(tmp_path, monkeypatch):
    one = _run(tmp_path / "threads1", 1)
    two = _run(tmp_path / "threads2", 2)
    assert len(one) == 2 and any(r["grad_norm"] > 0 for r in one)
    for a, b in zip(one, two):
        assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
    seen = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(cpu_threads, "MIN_WINDOW_S", 0.0)
    monkeypatch.setattr("onpolicy.determinism.cpu_share", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real_set(n)))
    flip = iter(range(10**6))
    monkeypatch.setattr(cpu_threads, "machine_busy_seconds", lambda: 1e6 * (next(flip) % 2))
    auto = _run(tmp_path / "auto", "auto")
    assert seen.count(1) >= 10 and seen.count(2) >= 10  # switched back and forth during SFT and RL
    for a, b in zip(one, auto):
        assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
