"""scripts/profile_trainer.py: a CPU smoke run (--quick, both systems) whose JSON has every category adding up to
the wall time; the trace classifier on a hand-made CUDA trace (launch calls and External ids, scopes, backward nodes,
autograd's forward -> backward links, overlapping kernels); on the H100, 0.6B 32x8x512 (no warm-up: a check that every
kernel is found through its launch, not a measurement)."""
import importlib
import json

import pytest

from onpolicy.profiling import PREFIX, phase


def _profile():
    return importlib.import_module("scripts.profile_trainer")


def test_quick_profile_has_every_category_summing_to_the_wall(tmp_path):
    prof = _profile()
    assert prof.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "profile_trainer.json").read_text())
    assert [(r["workload"], r["system"]) for r in data["runs"]] == [("tiny-2x4x8", "invariant"),
                                                                     ("tiny-2x4x8", "default")]
    assert set(data["meta"]["categories"]) == set(prof.trace.CATEGORIES)
    for run in data["runs"]:
        cats = run["categories"]
        assert set(cats) == set(prof.trace.CATEGORIES) and all(v >= 0 for v in cats.values())
        assert sum(cats.values()) <= run["wall_ms"] * (1 + 1e-9)
        assert sum(cats.values()) == pytest.approx(run["wall_ms"], rel=1e-6)  # host gaps close the sum
        for cat in ("gemm", "attention_fwd", "attention_bwd", "logprobs_loss", "norms", "recompute", "optimizer",
                    "weight_copy"):  # the tiny model's update runs all of them (checkpointing is on)
            assert cats[cat] > 0, (run["system"], cat)
        assert run["tokens"] == 2 * 4 * (10 + 8) and run["mode"] == "cpu" and run["train_s"] > 0
        assert {"forward", "backward", "recompute", "optimizer", "weight_copy"} <= set(run["phase_wall_ms"])
    assert (tmp_path / "profile_trainer.png").stat().st_size > 0
    assert not list(tmp_path.glob("trace_*.json"))  # traces are removed unless --keep-trace


def test_bad_arguments_are_one_line_errors():
    prof = _profile()
    with pytest.raises(SystemExit, match="--systems: unknown"):
        prof.parse(["--systems", "invariant,fast"])
    with pytest.raises(SystemExit, match="--workloads: unknown"):
        prof.parse(["--workloads", "0.6b-1x1x1"])
    with pytest.raises(ValueError, match="phase: got 'sampling'"):
        phase("sampling")


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1, "args": args}


def _kernel(name, ts, dur, corr, launch_ts, tid=1):
    return [_x("kernel", name, ts, dur, tid=7, correlation=corr),
            _x("cuda_runtime", "cudaLaunchKernel", launch_ts, 1, tid=tid, correlation=corr)]


def test_classifier_on_a_cuda_trace():
    """One update: forward (linear, attention, logprobs), loss, backward on autograd's thread (a recompute, the
    linear and attention backward nodes, a loss node linked to its forward op), optimizer with the weight copy."""
    trace = importlib.import_module("scripts.profile_trainer_trace")
    ev = [_x("user_annotation", trace.WINDOW, 0, 1000)]
    ev += [_x("user_annotation", PREFIX + n, s, d) for n, s, d in
           (("forward", 10, 200), ("logprobs", 150, 50), ("loss", 220, 20), ("backward", 250, 500),
            ("optimizer", 800, 150), ("weight_copy", 900, 40))]
    ev += [_x("user_annotation", PREFIX + "recompute", 260, 100, tid=2)]
    ev += [_x("cpu_op", "_Linear", 20, 30), _x("cpu_op", "_AttentionVarlen", 60, 30),
           _x("cpu_op", "aten::mul", 100, 10),
           _x("cpu_op", "_TokenLogprobs", 160, 30), _x("cpu_op", "aten::exp", 225, 5),
           _x("cpu_op", "_Linear", 270, 20, tid=2),
           _x("cpu_op", trace.BACKWARD_NODE + "_LinearBackward", 400, 50, tid=2),
           _x("cpu_op", trace.BACKWARD_NODE + "_AttentionVarlenBackward", 500, 50, tid=2),
           _x("cpu_op", trace.BACKWARD_NODE + "ExpBackward0", 600, 20, tid=2),
           _x("cpu_op", "ExpBackward0", 601, 10, tid=2),
           _x("cpu_op", trace.BACKWARD_NODE + "_AddRMSNormBackward", 650, 30, tid=2, **{"External id": 99})]
    ev += [{"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": 5, "ts": 225, "tid": 1, "pid": 1},
           {"ph": "f", "cat": "fwdbwd", "name": "fwdbwd", "id": 5, "ts": 601, "tid": 2, "pid": 1, "bp": "e"}]
    kernels = [("_matmul_kernel", 30, 100, 1, 21), ("_attn_fwd_kernel", 130, 20, 2, 61),
               ("elementwise_kernel", 150, 10, 3, 101), ("_matmul_kernel", 170, 30, 4, 161),
               ("_fold_span_kernel", 200, 5, 5, 162), ("exp_kernel", 230, 4, 6, 226),
               ("_matmul_kernel", 280, 40, 7, 271), ("_matmul_kernel", 410, 60, 8, 401),
               ("_attn_bwd_dq_kernel", 510, 30, 9, 501), ("_attn_bwd_dkdv_kernel", 540, 40, 10, 502),
               ("mul_kernel", 605, 5, 11, 602), ("multi_tensor_apply_kernel", 810, 50, 12, 805),
               ("copy_kernel", 905, 20, 13, 901), ("gemm_from_nowhere", 960, 10, 14, 990)]
    for name, ts, dur, corr, launch in kernels:
        ev += _kernel(name, ts, dur, corr, launch, tid=2 if 250 <= launch < 750 else 1)
    ev += [_x("kernel", "_matmul_kernel", 965, 10, tid=8, correlation=15)]  # overlaps the one above: shared
    ev += [_x("kernel", "vectorized_elementwise_kernel", 700, 10, tid=7, correlation=16, **{"External id": 99})]
    res = trace.analyze({"traceEvents": ev})
    ms = {k: round(v * 1e3, 6) for k, v in res["categories"].items()}  # microseconds
    assert ms == {"gemm": 100 + 60 + 7.5 + 7.5, "attention_fwd": 20, "attention_bwd": 70,
                  "logprobs_loss": 30 + 5 + 4 + 5, "norms": 10, "elementwise": 10, "recompute": 40, "optimizer": 50,
                  "weight_copy": 20, "host_gaps": 1000 - 439}
    assert res["busy_ms"] == pytest.approx(0.439) and res["overlap"] == pytest.approx(444 / 439)
    assert res["launch_attributed"] == pytest.approx((439 - 7.5) / 439)  # one kernel has no launch record
    assert res["phase_device_ms"]["backward"] == pytest.approx((60 + 70 + 5 + 10) / 1e3)
    assert res["top_kernels"]["gemm"][0][:2] == ["_matmul_kernel", 3]
    with pytest.raises(ValueError, match="exactly one"):
        trace.analyze({"traceEvents": ev[1:]})


@pytest.mark.gpu
def test_profile_0_6b_both_systems_on_the_gpu(tmp_path):
    prof = _profile()
    assert prof.main(["--workloads", "0.6b-32x8x512", "--warmup", "0", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "profile_trainer.json").read_text())["runs"]
    for run in runs:
        print(run["system"], {k: round(v) for k, v in run["categories"].items()}, f"MFU {run['mfu']:.3f}")
        assert run["mode"] == "cuda" and run["launch_attributed"] > 0.99
        assert sum(run["categories"].values()) == pytest.approx(run["wall_ms"], rel=1e-6)
        assert run["categories"]["gemm"] > 0 and run["categories"]["attention_bwd"] > 0
