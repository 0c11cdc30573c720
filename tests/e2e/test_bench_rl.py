"""scripts/bench_rl.py: a CPU smoke run (--quick) and, on the H100, the Qwen3-0.6B shape at 32x8x512 for 3
steps with onpolicy/kl exactly 0.0 every step (issue 10)."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rl", REPO / "scripts" / "bench_rl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_rl_quick_writes_json_and_png(tmp_path):
    assert _bench().main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_rl.json").read_text())
    rows = {r["system"]: r for r in data["results"]}
    assert set(rows) == {"invariant", "default"}  # no TRL figures recorded for the tiny workload
    assert rows["invariant"]["kl"] == [0.0] and rows["invariant"]["tokens_per_step"] == 2 * 4 * 8
    assert rows["invariant"]["sample_s"] > 0 and rows["invariant"]["train_s"] > 0
    assert (tmp_path / "bench_rl.png").stat().st_size > 0


@pytest.mark.gpu
def test_qwen3_0_6b_shape_32x8x512_three_steps_exactly_on_policy(tmp_path):
    bench = _bench()
    assert bench.main(["--workloads", "0.6b-32x8x512", "--systems", "invariant", "--warmup", "0", "--steps", "3",
                       "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "bench_rl.json").read_text())["results"]
    print(f"0.6B 32x8x512: {row['step_s']:.2f} s/step, peak {row['peak_gib']:.1f} GiB, kl {row['kl']}")
    assert row["kl"] == [0.0, 0.0, 0.0] and row["tokens_per_step"] == 32 * 8 * 512
    assert row["peak_gib"] < 79.0
