"""Smoke tests of the engine scripts on the tiny CPU model (each asserts a real property, not just exit 0)."""
import importlib
import json

from onpolicy.model.tiny import build_tiny


def _load(name):
    return importlib.import_module(f"scripts.{name}")


def test_determinism_demo_invariant_mode_gives_one_completion():
    demo = _load("determinism_demo")
    model, _ = build_tiny(seed=5, head_dim=64, num_hidden_layers=1)
    r = demo.run(model.eval(), n=5, max_tokens=4, invariant=True, seed=0, budget=24, max_num_seqs=6)
    assert r["copies"] == 5 and r["unique"] == 1 and r["unique_logprob_vectors"] == 1
    assert r["first_divergence"] is None
    assert demo.first_divergence([[1, 2, 3], [1, 2, 3], [1, 5, 3]]) == 1


def test_bench_engine_quick_writes_json(tmp_path):
    bench = _load("bench_engine")
    assert bench.main(["--quick", "--systems", "invariant", "--batch-sizes", "1,2", "--max-tokens", "2",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_engine.json").read_text())
    assert [(r["system"], r["batch"], r["tokens"]) for r in data["results"]] == [("invariant", 1, 2), ("invariant", 2, 4)]
    assert (tmp_path / "bench_engine.png").stat().st_size > 0


def test_bench_scale_text_hash_reward_is_a_function_of_the_text():
    mod = _load("bench_scale_recipe")
    texts = ["abc", "abd", "", "abc"]
    values = mod.text_hash(prompts=[""] * 4, completions=texts)
    assert values[0] == values[3] and len(set(values[:3])) == 3 and all(0 <= v < 1 for v in values)


def test_bench_attention_quick_compares_every_pass(tmp_path):
    bench = _load("bench_attention")
    rows = bench.main(["--quick", "--device", "cpu", "--reps", "1", "--out", str(tmp_path)])
    assert [r["op"] for r in rows] == ["forward", "backward", "decode", "decode"]
    assert all(r["ours_ms"] > 0 and r["base_ms"] > 0 and r["ratio"] == r["base_ms"] / r["ours_ms"] for r in rows)
    data = json.loads((tmp_path / "attention.json").read_text())
    assert len(data["results"]) == 4 and (tmp_path / "attention.png").stat().st_size > 0
