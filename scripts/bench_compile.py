"""bench_compile: how long the Triton compiles of a recorded run take serially and spread over a pool of threads
or processes -- what compiling a cold start's kernels ahead, in parallel, would cost.

Input: the compilation log of a run (`--log`; scripts/bench_cold_start.py writes `compile-log-cold.jsonl` in
its --workdir): one JSON line per kernel compile with a "spec" (kernel module and name, signature, constexprs,
attributes, options, target). Every setting of `--pools` (e.g. `serial,threads:4,processes:16`) compiles all
of the log's specialisations into a new empty TRITON_CACHE_DIR (`triton.compile` on an `ASTSource`; no kernel
runs, so no GPU is needed when the log names its target) and reports the wall time, the summed per-kernel
compile time and the speed-up over serial. Processes are forked after the kernel modules are imported.
`--quick` compiles two small kernels of this repository for sm_90 with bench_cold_start's listener installed,
checks that the specs read back from that log compile to the same cache entries, and times those two: a smoke
run.
Prints a table; writes bench_compile.json to --out. Left out: the launcher / driver-module builds, loading the
compiled kernels onto a GPU, how a pool would be wired into start-up (scripts/bench_cold_start.py measures that).
"""
from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path


def _tuples(value):
    """JSON lists back to the tuples Triton's options and keys use (recursively)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_specs(path: str | Path) -> list[dict]:
    """The "spec" of every compile (cache hits and rows without a spec are skipped) in a compilation log."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["spec"] for r in rows if not r.get("cache_hit") and "spec" in r]


def compile_spec(spec: dict) -> float:
    """Compile one specialisation into the current TRITON_CACHE_DIR; -> seconds."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = importlib.import_module(spec["module"])
    fn = getattr(module, spec["qualname"])
    src = ASTSource(fn, spec["signature"], constexprs={tuple(k): _tuples(v) for k, v in spec["constants"]},
                    attrs={tuple(k): _tuples(v) for k, v in spec["attrs"]})
    options = {k: _tuples(v) for k, v in spec["options"].items()}
    t0 = time.perf_counter()
    triton.compile(src, target=GPUTarget(*spec["target"]), options=options)
    return time.perf_counter() - t0


def _run_one(spec: dict) -> tuple[float, str | None]:
    try:
        return compile_spec(spec), None
    except Exception as e:  # noqa: BLE001 -- reported per spec, the others still compile
        return 0.0, f"{spec.get('qualname')}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


def run_pool(specs: list[dict], pool: str) -> dict:
    """Compile `specs` into a fresh cache with `pool` ("serial", "threads:N" or "processes:N")."""
    kind, _, n = pool.partition(":")
    with tempfile.TemporaryDirectory(prefix="triton_cache_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        if kind == "serial":
            results = [_run_one(s) for s in specs]
        elif kind == "threads":
            with ThreadPoolExecutor(int(n)) as ex:
                results = list(ex.map(_run_one, specs))
        else:
            with ProcessPoolExecutor(int(n), mp_context=multiprocessing.get_context("fork")) as ex:
                results = list(ex.map(_run_one, specs))
        wall = time.perf_counter() - t0
    errors = [e for _, e in results if e]
    return {"pool": pool, "wall_s": round(wall, 3), "compile_s": round(sum(t for t, _ in results), 3),
            "compiled": len(results) - len(errors), "errors": errors[:5], "failed": len(errors)}


def quick_specs() -> list[dict]:
    """Two small kernels of this repository (RMSNorm, SiLU-mul) in bf16 for sm_90, as the log records them."""
    base = {"options": {"num_warps": 4, "num_stages": 3}, "target": ["cuda", 90, 32],
            "attrs": [[[0], [["tt.divisibility", 16]]]]}
    norm = {"module": "onpolicy.kernels.rmsnorm", "qualname": "_rms_norm_kernel", "constants": [[[7], 1024]],
            "signature": {"x_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "H": "i32", "stride_x": "i32",
                          "stride_y": "i32", "eps": "fp32", "BLOCK": "constexpr"}, **base}
    return [norm, {**norm, "constants": [[[7], 2048]]}]


def record_quick_log(path: Path) -> int:
    """Compile quick_specs() with bench_cold_start's listener installed (a real log at `path`), then compile the
    specs read back from that log into the same cache: -> how many of those were cache hits (all of them when
    a logged spec reproduces its specialisation exactly)."""
    import importlib.util

    from triton import knobs

    hook_file = Path(__file__).resolve().parent / "cold_start_hook" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("cold_start_hook", hook_file)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    hook._install_listener(str(path))
    try:
        with tempfile.TemporaryDirectory(prefix="triton_cache_") as cache:
            os.environ["TRITON_CACHE_DIR"] = cache
            for s in quick_specs():
                compile_spec(s)
            for s in read_specs(path):
                compile_spec(s)
    finally:
        knobs.compilation.listener = None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(r["cache_hit"] for r in rows)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", default=None, help="a compilation log (compile-log-cold.jsonl of bench_cold_start)")
    ap.add_argument("--pools", default="serial,threads:4,threads:16,processes:4,processes:16")
    ap.add_argument("--out", default="outputs/bench_compile")
    ap.add_argument("--quick", action="store_true",
                    help="two small kernels for sm_90 from a log written here; serial, 2 threads, 2 processes")
    args = ap.parse_args(argv)
    if args.quick:
        args.pools = "serial,threads:2,processes:2"
    elif args.log is None:
        ap.error("--log: required (a compilation log); or --quick")
    for pool in args.pools.split(","):
        kind, _, n = pool.partition(":")
        if not (kind == "serial" and not n or kind in ("threads", "processes") and n.isdigit() and int(n) > 0):
            ap.error(f"--pools: {pool!r}; allowed: serial, threads:N, processes:N")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    meta = {}
    if args.quick:
        os.makedirs(args.out, exist_ok=True)
        args.log = os.path.join(args.out, "quick-compile-log.jsonl")
        Path(args.log).unlink(missing_ok=True)
        meta["replay_cache_hits"] = record_quick_log(Path(args.log))
    specs = read_specs(args.log)
    if not specs:
        raise SystemExit(f"bench_compile: no compiled specialisations with a spec in {args.log}")
    for name in {s["module"] for s in specs}:
        importlib.import_module(name)  # before any fork
    if specs:  # one-time set-up of the compiler (backend imports, first ptxas) outside the timings
        with tempfile.TemporaryDirectory(prefix="triton_cache_") as cache:
            os.environ["TRITON_CACHE_DIR"] = cache
            _run_one(specs[0])
    results = []
    print(f"{len(specs)} specialisations of {len({s['qualname'] for s in specs})} kernels")
    for pool in args.pools.split(","):
        r = run_pool(specs, pool)
        results.append(r)
        base = results[0]["wall_s"]
        print(f"{pool:>14}: wall {r['wall_s']:8.2f} s, summed compile {r['compile_s']:8.2f} s, compiled "
              f"{r['compiled']}, failed {r['failed']}, speed-up vs {results[0]['pool']} {base / r['wall_s']:.2f}x",
              flush=True)
        for e in r["errors"]:
            print(f"      {e}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_compile.json"), "w") as f:
        json.dump({"log": args.log, "specs": len(specs), "results": results, **meta}, f, indent=2)
    print(f"wrote {args.out}/bench_compile.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
