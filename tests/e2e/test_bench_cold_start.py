"""scripts/bench_cold_start.py: the CPU smoke run (two recipe processes, cold and warm cache) with its stage table,
the offline inputs it writes, and the parsing of the child's lines and of a Triton cache directory."""
import importlib
import json
import os

import pytest


def _bench():
    return importlib.import_module("scripts.bench_cold_start")


def test_quick_run_times_both_runs_by_stage(tmp_path, capsys):
    assert _bench().main(["--quick", "--out", str(tmp_path), "--workdir", str(tmp_path / "work")]) == 0
    data = json.loads((tmp_path / "bench_cold_start.json").read_text())
    assert set(data["runs"]) == {"cold", "warm"} and data["meta"]["quick"]
    for run in data["runs"].values():
        stages = run["stages"]
        assert {"start-up: interpreter, imports, config", "set-up: model", "set-up: engine", "step 1: sampling",
                "step 1: training"} <= set(stages)
        total = stages.pop("total to the end of step 1")
        assert total > 0 and sum(stages.values()) == pytest.approx(total)
        assert run["lines"][-1][1].startswith("step 1 |")
    assert data["triton_cache"]["specialisations"] == 0  # the CPU runs the torch paths: nothing compiles
    assert data["runs"]["cold"]["triton_compiles"] is None
    out = capsys.readouterr().out
    assert "total to the end of step 1" in out and "cold - warm" in out
    assert not any(text.startswith("done:") for _, text in data["runs"]["cold"]["lines"])  # stopped at step 1


def test_offline_inputs_load_as_the_config_reads_them(tmp_path):
    from onpolicy.config import parse_args
    from onpolicy.data import load_prompts
    from onpolicy.model import load_tokenizer
    from scripts.cold_start_inputs import write_checkpoint, write_gsm8k

    config = write_checkpoint(tmp_path / "m", "tiny")
    data = write_gsm8k(tmp_path / "d" / "train.jsonl", 8)
    tok = load_tokenizer(str(tmp_path / "m"))
    assert len(tok) == config["vocab_size"] and tok.chat_template
    cfg = parse_args(["--config", "configs/qwen3-0.6b-gsm8k.yaml", "--model.path", str(tmp_path / "m"),
                      "--data.dataset", str(data)])
    rows = load_prompts(cfg.data, tok)
    assert len(rows) == 8 and all(r["answer"].split("#### ")[1].isdigit() for r in rows)
    assert "<unk>" not in tok.decode(tok.encode(rows[0]["prompt"], add_special_tokens=False))
    with pytest.raises(ValueError, match="shape: '1b'; allowed: 0.6b, tiny"):
        write_checkpoint(tmp_path / "x", "1b")


def test_stages_from_lines_and_metrics():
    bench = _bench()
    run = {"lines": [[1.5, "run directory: x"], [2.0, "generation: ..."],
                     [9.0, "set-up: 7.0 s (tokenizer and data 1.0, model 2.0, SFT 0.0, optimizer 1.5, engine 2.5, "
                           "logger 0.0)"], [20.0, "step 1 | reward 0"]],
           "spawn_wall": 1000.0, "step1_s": 20.0}
    metrics = {"time/sample": 6.0, "time/train": 4.0, "time/step": 10.5}
    got = bench.stages(run, metrics)
    assert got["set-up: tokenizer and data"] == 1.0 and got["set-up: engine"] == 2.5
    assert got["step 1: scoring"] == pytest.approx(0.5)
    assert got["other (run directory, gaps)"] == pytest.approx(20.0 - 1.5 - 7.0 - 10.5)
    assert bench.phase_bounds(run, metrics) == [("set-up", 1009.0), ("step 1 sampling", 1015.5),
                                                ("step 1 scoring + training", 1021.0)]
    assert "step 1: sampling" not in bench.stages(run, None)


def test_triton_cache_listing(tmp_path):
    bench = _bench()
    for d, name, when in (("a1", "_matmul_kernel", 1005.0), ("a2", "_matmul_kernel", 1012.0),
                          ("b1", "_attn_fwd_kernel", 1018.0)):
        (tmp_path / d).mkdir()
        meta = tmp_path / d / f"{name}.json"
        meta.write_text(json.dumps({"name": name, "num_warps": 8, "num_stages": 3}))
        (tmp_path / d / f"__grp__{name}.json").write_text(json.dumps({"child_paths": {}}))
        os.utime(meta, (when, when))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cuda_utils.so").write_bytes(b"\0" * 10)
    entries = bench.triton_cache_entries(str(tmp_path))
    assert [e["name"] for e in entries] == ["_matmul_kernel", "_matmul_kernel", "_attn_fwd_kernel"]
    summary = bench.summarize_cache(entries, [("set-up", 1009.0), ("sampling", 1015.0), ("training", 1016.0)],
                                    str(tmp_path))
    assert summary["by_name"] == {"_matmul_kernel": 2, "_attn_fwd_kernel": 1} and summary["kernels"] == 2
    assert summary["by_phase"] == {"set-up": 1, "sampling": 1, "after step 1": 1}
    assert summary["shared_objects"] == {"cuda_utils.so": 1} and summary["files"] == 7


def test_bad_arguments_are_one_line_errors(capsys):
    bench = _bench()
    for argv, message in ((["--runs", "hot"], "--runs: unknown ['hot']"),
                          (["--set", "engine.use_cuda_graphs"], "--set: ['engine.use_cuda_graphs']")):
        with pytest.raises(SystemExit):
            bench.parse(argv)
        assert message in capsys.readouterr().err
    assert bench.parse(["--set", "engine.block_size=32"]).overrides == ["--engine.block_size", "32"]


def test_stop_ids_become_the_vocab_tail():
    bench = _bench()
    args = bench.parse(["--stop-ids", "3", "--set", "trainer.seed=1"])
    assert bench.recipe_overrides(args, 100) == ["--sampling.stop_token_ids", "[97, 98, 99]", "--trainer.seed", "1"]
    assert bench.recipe_overrides(bench.parse([]), 100) == []
    with pytest.raises(SystemExit, match="--stop-ids: 96; allowed: 0 to 95"):
        bench.recipe_overrides(bench.parse(["--stop-ids", "96"]), 100)


def test_compile_listener_log(tmp_path, monkeypatch):
    """The child's listener (cold_start_hook/sitecustomize.py) writes one row per compile / cache load, and
    read_compile_log sums them per kernel and per phase."""
    import importlib.util
    from types import SimpleNamespace

    triton = pytest.importorskip("triton")
    if not hasattr(getattr(getattr(triton, "knobs", None), "compilation", None), "listener"):
        pytest.skip("this Triton has no compilation listener")
    monkeypatch.delenv("COLD_START_TRITON_LOG", raising=False)
    spec = importlib.util.spec_from_file_location("cold_start_hook", "scripts/cold_start_hook/sitecustomize.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    log = tmp_path / "log.jsonl"
    monkeypatch.setattr(triton.knobs.compilation, "listener", None)
    hook._install_listener(str(log))
    listener = triton.knobs.compilation.listener
    times = SimpleNamespace(total=2_500_000, lowering_stages=[("ttir", 1_000_000), ("cubin", 1_500_000)])
    for name, hit in (("_matmul_kernel", False), ("_matmul_kernel", False), ("_rms_norm_kernel", True)):
        listener(src=SimpleNamespace(name=name, signature={"M": "i32"}, constexprs={(4,): 128}, attrs={}),
                 metadata={"num_warps": 8, "num_stages": 3}, metadata_group={}, times=times, cache_hit=hit)
    listener(src=None, other_triton_argument=1)  # arguments of another Triton version: no row, no error
    got = _bench().read_compile_log(log, [("set-up", 0.0), ("step 1 sampling", 4e9)])
    assert got["compiles"] == 2 and got["compile_s"] == 5.0 and got["cache_loads"] == 1
    assert got["by_name"] == {"_matmul_kernel": [2, 5.0]} and got["by_phase"] == {"step 1 sampling": [2, 5.0]}
    spec0 = got["specialisations"][0]
    assert spec0["stages_us"] == {"ttir": 1_000_000, "cubin": 1_500_000} and "'M': 'i32'" in spec0["signature"]
    assert _bench().read_compile_log(tmp_path / "none.jsonl", []) is None


def test_a_silent_child_is_stopped_at_the_timeout():
    import sys

    run = _bench().run_child([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             "/tmp/unused-triton-cache", timeout=2.0)
    assert run["step1_s"] is None and run["lines"][0][1] == "up" and run["rc"] != 0
