"""scripts/bench_multiturn.py --quick runs both steps (parity exact in each) and writes its JSON."""
import importlib
import json


def test_bench_multiturn_quick(tmp_path):
    bench = importlib.import_module("scripts.bench_multiturn")
    result = bench.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_multiturn.json").read_text())
    assert saved["turns_mean"] == 3.0 and saved["rollout_ratio"] == result["rollout_ratio"] > 0
    assert abs(saved["single_tokens"] - saved["multi_tokens"]) <= saved["prompts"] * saved["samples"]
