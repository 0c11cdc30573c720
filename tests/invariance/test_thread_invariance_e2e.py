"""The embedded default (configs/tiny-cpu.yaml, shortened) gives bitwise identical metrics.jsonl -- every field
but timings -- with 1 and with 2 torch threads, its SFT warm-start included (each run trains its own)."""
import functools
import json
from pathlib import Path

import torch

from onpolicy import determinism

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
TIMING = ("time/", "throughput/")


def _run(out_dir: Path, threads: int, monkeypatch):
    from onpolicy.config import parse_args
    from onpolicy.trainer import train

    monkeypatch.setattr(determinism, "enable", functools.partial(determinism.enable, cpu_threads=threads))
    overrides = {"trainer.steps": "2", "trainer.sft_warmup_steps": "30", "trainer.prompts_per_step": "8",
                 "sampling.num_generations": "4",
                 "logging.output_dir": str(out_dir / "run"), "logging.plot": "false"}
    argv = ["--config", str(CONFIG)] + [x for k, v in overrides.items() for x in (f"--{k}", v)]
    old = torch.get_num_threads()
    try:
        train(parse_args(argv), log=lambda *a: None)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(old)
    rows = [json.loads(line) for line in open(out_dir / "run" / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_tiny_default_same_metrics_with_1_and_2_threads(tmp_path, monkeypatch):
    one = _run(tmp_path / "threads1", 1, monkeypatch)
    two = _run(tmp_path / "threads2", 2, monkeypatch)
    assert len(one) == 2 and any(r["grad_norm"] > 0 for r in one)
    for a, b in zip(one, two):
        assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
