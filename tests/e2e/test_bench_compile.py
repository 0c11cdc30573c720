"""scripts/bench_compile.py: a compilation log written by bench_cold_start's listener reproduces its kernels'
specialisations (compiled again into the same cache they are hits), for sm_90 on any machine."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_quick_roundtrip_compiles_the_logged_specialisations(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real compiles, not the interpreter
    out = subprocess.run([sys.executable, "-m", "scripts.bench_compile", "--quick", "--out", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode and "listener" in out.stderr:
        pytest.skip("this Triton has no compilation listener")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "bench_compile.json").read_text())
    assert data["specs"] == 2 and data["replay_cache_hits"] == 2
    assert [(r["pool"], r["compiled"], r["failed"]) for r in data["results"]] == [
        ("serial", 2, 0), ("threads:2", 2, 0), ("processes:2", 2, 0)]
    assert all(r["wall_s"] > 0 for r in data["results"])


def test_bad_pools_and_missing_log_are_one_line_errors(capsys):
    bench = importlib.import_module("scripts.bench_compile")
    for argv, message in ((["--log", "x.jsonl", "--pools", "serial,gpu:2"], "--pools: 'gpu:2'"),
                          (["--log", "x.jsonl", "--pools", "threads:0"], "--pools: 'threads:0'"),
                          ([], "--log: required")):
        with pytest.raises(SystemExit):
            bench.parse(argv)
        assert message in capsys.readouterr().err


def test_read_specs_skips_cache_hits_and_rows_without_a_spec(tmp_path):
    bench = importlib.import_module("scripts.bench_compile")
    log = tmp_path / "log.jsonl"
    rows = [{"cache_hit": False, "spec": {"qualname": "a"}}, {"cache_hit": True, "spec": {"qualname": "b"}},
            {"cache_hit": False, "spec_error": "KeyError"}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.read_specs(log) == [{"qualname": "a"}]
    assert bench._tuples([1, [2, ["x"]]]) == (1, (2, ("x",)))
