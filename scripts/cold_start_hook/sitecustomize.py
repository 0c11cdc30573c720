"""Loaded by scripts/bench_cold_start.py's child processes only (this folder goes first on their PYTHONPATH):
when COLD_START_TRITON_LOG names a file, a Triton compilation listener appends one JSON line per kernel
compile or cache load to it (wall time, kernel name, cache hit, compile microseconds per stage, the
specialisation: signature, constexprs, attributes, and a "spec" that scripts/bench_compile.py compiles
again). The environment's own sitecustomize, if any, runs first.
Left out: Triton versions without `knobs.compilation.listener` (the bench then reads the cache's file times).
"""
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain_site_customize() -> None:
    paths = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _spec(src, metadata) -> dict:
    """What `triton.compile(ASTSource(fn, signature, constants, attrs), target, options)` needs to compile this
    specialisation again (scripts/bench_compile.py): JSON-able, keys of constants / attrs as lists."""
    import json

    fn = src.fn.fn if hasattr(src.fn, "fn") else src.fn
    target = metadata.get("target")
    options = {}
    for key, value in metadata.items():
        if key in ("hash", "target", "name", "triton_version"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        options[key] = value
    return {"module": fn.__module__, "qualname": fn.__qualname__, "signature": dict(src.signature),
            "constants": [[list(k), v] for k, v in src.constants.items()],
            "attrs": [[list(k), v] for k, v in src.attrs.items()], "options": options,
            "target": [getattr(target, "backend", None), getattr(target, "arch", None),
                       getattr(target, "warp_size", None)]}


def _install_listener(path: str) -> None:
    import json
    import threading
    import time

    try:
        from triton import knobs
    except ImportError:
        return
    if not hasattr(knobs, "compilation") or not hasattr(knobs.compilation, "listener"):
        return
    lock = threading.Lock()

    def listener(**kwargs):
        try:
            _write(**kwargs)
        except Exception:  # noqa: BLE001 -- the log must never break a compile (another Triton's arguments)
            pass

    def _write(*, src, metadata, times, cache_hit, **_):
        row = {"t": time.time(), "name": getattr(src, "name", "?"), "cache_hit": bool(cache_hit),
               "total_us": int(getattr(times, "total", 0)),
               "stages_us": dict(getattr(times, "lowering_stages", []) or []),
               "signature": repr(getattr(src, "signature", None)), "constexprs": repr(getattr(src, "constants", None)),
               "attrs": repr(getattr(src, "attrs", None)),
               "num_warps": metadata.get("num_warps"), "num_stages": metadata.get("num_stages")}
        try:
            row["spec"] = _spec(src, metadata)
        except Exception as e:  # noqa: BLE001 -- the log must never break a compile
            row["spec_error"] = f"{type(e).__name__}: {e}"
        with lock, open(path, "a") as f:
            f.write(json.dumps(row, default=repr) + "\n")

    knobs.compilation.listener = listener


_chain_site_customize()
if os.environ.get("COLD_START_TRITON_LOG"):
    _install_listener(os.environ["COLD_START_TRITON_LOG"])
