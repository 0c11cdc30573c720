"""scripts/bench_rl.py with LoRA on the CPU (--quick): `--lora R` measures each system's baseline without adapters
(base frozen, the input embeddings train) and then the adapter step (adapters only), both with onpolicy/kl 0.0;
the 8B workload has Qwen3-8B's shape."""
import importlib
import json

import pytest


def _bench():
    return importlib.import_module("scripts.bench_rl")


def test_bench_rl_quick_lora_and_its_baseline(tmp_path, monkeypatch):
    bench = _bench()
    trained = []
    select = bench.trainable_params

    def spy(model, args):
        params = select(model, args)
        trained.append([n for n, _ in params])
        return params

    monkeypatch.setattr(bench, "trainable_params", spy)
    assert bench.main(["--quick", "--systems", "invariant", "--lora", "4", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_rl.json").read_text())["results"]
    assert [r["system"] for r in rows] == ["invariant", "invariant+lora4"]
    assert all(r["kl"] == [0.0] and r["train_s"] > 0 for r in rows)
    assert rows[0]["frozen_base"] and rows[1]["lora"] == 4
    assert trained[0] == ["model.embed_tokens.weight"] and all(".lora." in n for n in trained[1])


def test_bench_rl_lora_flags_and_8b_shape():
    bench = _bench()
    cfg = bench.model_config("8b")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (4096, 12288, 36, 32, 8, 128, False)
    with pytest.raises(SystemExit, match="--lora"):
        bench.parse(["--lora", "-1"])
