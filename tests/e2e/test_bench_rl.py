"""scripts/bench_rl.py: a CPU smoke run (--quick; TRL live when trl imports, skipped with a note when not), the
workload table, the TRL system's checks and the merge of several runs; on the H100, the Qwen3-0.6B shape at
32x8x512 for 3 steps with onpolicy/kl exactly 0.0 every step."""
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HAS_TRL = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None


def _bench():
    return importlib.import_module("scripts.bench_rl")


def test_bench_rl_quick_writes_json_and_png(tmp_path, capsys, monkeypatch):
    # pytest puts tests/ on sys.path, where tests/vllm/ would pass for the vllm package in TRL's version check
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != REPO / "tests"])
    assert _bench().main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_rl.json").read_text())
    rows = {r["system"]: r for r in data["results"]}
    assert set(rows) == {"invariant", "default"} | ({"trl"} if HAS_TRL else set())
    assert data["meta"]["trl_live"] == HAS_TRL
    assert rows["invariant"]["kl"] == [0.0] and rows["invariant"]["tokens_per_step"] == 2 * 4 * 8
    assert rows["invariant"]["sample_s"] > 0 and rows["invariant"]["train_s"] > 0
    assert (tmp_path / "bench_rl.png").stat().st_size > 0
    if not HAS_TRL:  # no TRL figures recorded for the tiny workload: a note, no row
        assert "trl is not importable here" in capsys.readouterr().out
    else:
        assert rows["trl"]["tokens_per_step"] == 2 * 4 * 8 and not rows["trl"].get("recorded")


def test_workloads_parse_for_both_systems():
    bench = _bench()
    args = bench.parse(["--systems", "default"])
    assert args.names == list(bench.WORKLOADS) and "1.7b-32x8x1024" in args.names  # invariant: false at 1.7B too
    for name, work in bench.WORKLOADS.items():
        for invariant in (True, False):
            cfg = bench.run_config(work, invariant, args)
            assert (cfg.trainer.prompts_per_step, cfg.sampling.num_generations, cfg.sampling.max_tokens,
                    cfg.data.max_prompt_tokens, cfg.trainer.invariant) == \
                (work.prompts, work.generations, work.length, work.prompt_len, invariant), name
            assert cfg.trainer.activation_checkpointing and cfg.trainer.micro_batch_tokens == 16384, name
    gsm8k = bench.run_config(bench.WORKLOADS["0.6b-gsm8k"], True, args)
    assert (gsm8k.data.max_prompt_tokens, gsm8k.engine.max_num_batched_tokens) == (512, 8192)  # the shipped config's
    assert bench.run_config(bench.WORKLOADS["0.6b-32x8x512"], True, args).engine.max_num_batched_tokens == 16384
    over = bench.parse(["--micro-batch-tokens", "4096", "--no-checkpointing"])
    cfg = bench.run_config(bench.WORKLOADS["0.6b-gsm8k"], True, over)
    assert cfg.trainer.micro_batch_tokens == 4096 and not cfg.trainer.activation_checkpointing


def test_bad_selection_is_one_line_error():
    bench = _bench()
    with pytest.raises(SystemExit, match="--systems: unknown"):
        bench.parse(["--systems", "invariant,vllm"])
    with pytest.raises(SystemExit, match="--workloads: unknown"):
        bench.parse(["--workloads", "0.6b-64x8x512"])


def test_trl_side_checks_prompts_lengths_and_weights():
    from scripts import bench_rl_trl as trl_side

    assert trl_side.micro_batch_seqs(256, 522, 16384) == 16 and trl_side.micro_batch_seqs(8, 18, 16384) == 8
    assert trl_side.micro_batch_seqs(256, 20000, 16384) == 1
    tok = trl_side.id_tokenizer(1000)
    ids = [4, 999, 17, 4]
    assert tok(" ".join(f"t{i}" for i in ids))["input_ids"] == ids and tok.eos_token_id == 2
    work = SimpleNamespace(generations=2, length=3)
    prompts = [[5, 6], [7, 8]]
    clock = trl_side.StepClock(torch.device("cpu"), work, lambda step: prompts)
    clock.step_begin()
    clock.generated([[7, 8], [5, 6], [5, 6], [7, 8]], [[1, 2, 3]] * 4)
    clock.step_end()
    assert clock.rows[0]["tokens"] == 12 and clock.rows[0]["sample_s"] >= 0 and clock.rows[0]["train_s"] >= 0
    clock.step_begin()
    with pytest.raises(RuntimeError, match="prompt ids"):
        clock.generated([[5, 6]] * 4, [[1, 2, 3]] * 4)
    with pytest.raises(RuntimeError, match="completion lengths"):
        clock.generated([[5, 6], [5, 6], [7, 8], [7, 8]], [[1, 2, 3]] * 3 + [[1, 2]])
    ours = {"w": torch.ones(2, dtype=torch.bfloat16)}
    same = SimpleNamespace(model=SimpleNamespace(state_dict=lambda: {"w": torch.ones(2, dtype=torch.bfloat16)}))
    trl_side._check_weights(same, ours)
    other = SimpleNamespace(model=SimpleNamespace(state_dict=lambda: {"w": torch.zeros(2, dtype=torch.bfloat16)}))
    with pytest.raises(RuntimeError, match="differ"):
        trl_side._check_weights(other, ours)


def test_merge_joins_runs_later_file_wins(tmp_path):
    bench = _bench()
    row = lambda system, s, gib: {"workload": "w", "system": system, "step_s": s, "peak_gib": gib}  # noqa: E731
    runs = {"a": [dict(row("invariant", 2.0, 10.0), kl=[0.0]), row("trl", 9.0, 5.0)], "b": [row("trl", 8.0, 4.0)]}
    for name, rows in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"meta": {"skipped": []}, "results": rows}))
    out = tmp_path / "out"
    assert bench.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    data = json.loads((out / "bench_rl.json").read_text())
    assert [(r["system"], r["step_s"]) for r in data["results"]] == [("invariant", 2.0), ("trl", 8.0)]
    assert len(data["meta"]["merged"]) == 2 and (out / "bench_rl.png").stat().st_size > 0
    assert "| w | trl | 8.00 | 4.0 | 4.00x | 0.40x |" in bench.report.table(data["results"])


@pytest.mark.gpu
def test_qwen3_0_6b_shape_32x8x512_three_steps_exactly_on_policy(tmp_path):
    bench = _bench()
    assert bench.main(["--workloads", "0.6b-32x8x512", "--systems", "invariant", "--warmup", "0", "--steps", "3",
                       "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "bench_rl.json").read_text())["results"]
    print(f"0.6B 32x8x512: {row['step_s']:.2f} s/step, peak {row['peak_gib']:.1f} GiB, kl {row['kl']}")
    assert row["kl"] == [0.0, 0.0, 0.0] and row["tokens_per_step"] == 32 * 8 * 512
    assert row["peak_gib"] < 79.0


def test_plot_keeps_extra_systems_and_titles_device_and_date():
    report = _bench().report
    rows = [{"workload": "w", "system": s} for s in ("invariant+lora32", "trl", "invariant")]
    assert report.systems_ran(rows) == ["invariant", "trl", "invariant+lora32"]
    merged = {"merged": [{"device": "H100", "date": "2026-12-08"}, {"device": "H100"}]}
    assert report.title(merged) == "bench_rl, H100, 2026-12-08 / date not recorded"


@pytest.mark.gpu
def test_qwen3_8b_shape_lora_three_steps_exactly_on_policy(tmp_path):
    """Qwen3-8B's shape with rank-32 adapters on every linear layer fits one H100 for 3 RL steps, KL 0.0 each."""
    bench = _bench()
    assert bench.main(["--workloads", "8b-16x8x512", "--systems", "invariant", "--lora", "32", "--warmup", "0",
                       "--steps", "3", "--out", str(tmp_path)]) == 0
    rows = {r["system"]: r for r in json.loads((tmp_path / "bench_rl.json").read_text())["results"]}
    lora = rows["invariant+lora32"]
    print(f"8B LoRA r=32 16x8x512: {lora['step_s']:.2f} s/step, peak {lora['peak_gib']:.1f} GiB, kl {lora['kl']}")
    assert lora["kl"] == [0.0, 0.0, 0.0] and lora["lora"] == 32 and lora["peak_gib"] < 79.0
