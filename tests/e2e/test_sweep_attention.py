"""scripts/sweep_attention.py on CPU (Triton interpreter, tiny fp32 shapes): the shipped forward tile gives its
own bits, a tile with other query rows keeps them, a different key tile is flagged as new bits, backward
candidates are checked run to run, the kernels' tile tables are restored, and the JSON and PNG are written."""
import importlib
import json
import os

import pytest
import torch


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or TRITON_INTERPRET=1")
def test_quick_sweep_checks_bits_and_restores_the_tables(tmp_path):
    sweep = importlib.import_module("scripts.sweep_attention")
    fwd_before = dict(sweep.fwd_kernels.FWD_TILE), sweep.fwd_kernels.BLOCK_K, sweep.fwd_kernels.FWD_STAGES
    bwd_before = dict(sweep.bwd_kernels.BWD_TILE)
    rows = sweep.main(["--quick", "--out", str(tmp_path)])
    assert (dict(sweep.fwd_kernels.FWD_TILE), sweep.fwd_kernels.BLOCK_K, sweep.fwd_kernels.FWD_STAGES) == fwd_before
    assert dict(sweep.bwd_kernels.BWD_TILE) == bwd_before
    fwd = {tuple(r["tile"]): r for r in rows if r["pass_"] == "forward"}
    shipped = sweep.shipped_forward(torch.float32)
    assert fwd[shipped]["same_bits"] and fwd[shipped]["ok"]
    assert fwd[(32, 32, 4, 2)]["same_keys"] is False and fwd[(32, 32, 4, 2)]["ok"]
    bwd = [r for r in rows if r["pass_"] == "backward"]
    assert len(bwd) == 2 and all(r["run_to_run"] and r["ok"] for r in bwd)
    data = json.loads((tmp_path / "sweep_attention.json").read_text())
    assert data["meta"]["shipped"]["forward"] == list(shipped)
    assert (tmp_path / "sweep_attention.png").stat().st_size > 0
