"""scripts/bench_rl.py with LoRA on the CPU (--quick): `--lora R` trains adapters only with onpolicy/kl 0.0,
`--frozen-base` (its baseline) trains the input embeddings only; the 8B workload has Qwen3-8B's shape."""
import importlib
import json

import pytest


def _bench():
    return importlib.import_module("scripts.bench_rl")


@pytest.mark.parametrize("flags", [["--lora", "4"], ["--frozen-base"]])
def test_bench_rl_quick_lora(tmp_path, flags, monkeypatch):
    bench = _bench()
    counted = {}
    trainable = bench.trainable_params

    def spy(model, args):
        params = trainable(model, args)
        counted["n"] = sum(p.numel() for _, p in params)
        counted["names"] = [n for n, p in model.named_parameters() if p.requires_grad]
        return params

    monkeypatch.setattr(bench, "trainable_params", spy)
    assert bench.main(["--quick", "--systems", "invariant", "--out", str(tmp_path)] + flags) == 0
    row = json.loads((tmp_path / "bench_rl.json").read_text())["results"][0]
    assert row["kl"] == [0.0] and row["train_s"] > 0
    if flags[0] == "--lora":
        assert row["lora"] == 4 and all(".lora." in n for n in counted["names"])
    else:
        assert row["frozen_base"] and counted["names"] == ["model.embed_tokens.weight"]


def test_bench_rl_lora_flags_and_8b_shape():
    bench = _bench()
    cfg = bench.model_config("8b")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (4096, 12288, 36, 32, 8, 128, False)
    with pytest.raises(SystemExit, match="--lora"):
        bench.parse(["--lora", "4", "--frozen-base"])
