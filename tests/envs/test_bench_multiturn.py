"""scripts/bench_multiturn.py --quick runs both steps (parity exact in each) and writes its JSON."""
import importlib.util
import json

from tests.e2e.conftest import REPO


def test_bench_multiturn_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_multiturn", REPO / "scripts" / "bench_multiturn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_multiturn.json").read_text())
    assert saved["turns_mean"] == 3.0 and saved["rollout_ratio"] == result["rollout_ratio"] > 0
    assert abs(saved["single_tokens"] - saved["multi_tokens"]) <= saved["prompts"] * saved["samples"]
