"""Triton's side of scripts/bench_cold_start.py: what compiled before step 1 ended, and what it cost.

`read_compile_log` reads the JSON lines the child's compilation listener wrote (cold_start_hook/sitecustomize.py;
Triton with `knobs.compilation.listener`): compiles and cache loads with their seconds, per kernel and per phase,
and each compiled specialisation (signature, constexprs, attributes). `triton_cache_entries` /
`summarize_cache` list a Triton cache directory (one `<name>.json` per compiled specialisation; its write time
places it in a phase), which works with any Triton. Phases are (name, wall-clock end) pairs in order.
Left out: the launcher / utility builds' times (their `.so` files are counted).
"""
from __future__ import annotations

import json
from pathlib import Path


def triton_cache_entries(cache_dir: str) -> list[dict]:
    """One entry per compiled kernel specialisation in a Triton cache directory: {"name", "mtime", "dir",
    "num_warps", "num_stages"}, from each `<name>.json` metadata file (not `__grp__*`); sorted by mtime."""
    entries = []
    for meta in Path(cache_dir).glob("*/*.json"):
        if meta.name.startswith("__grp__"):
            continue
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or "name" not in data:
            continue
        entries.append({"name": data["name"], "mtime": meta.stat().st_mtime, "dir": meta.parent.name,
                        "num_warps": data.get("num_warps"), "num_stages": data.get("num_stages")})
    return sorted(entries, key=lambda e: e["mtime"])


def summarize_cache(entries: list[dict], bounds: list[tuple[str, float]], cache_dir: str) -> dict:
    """Kernel specialisations per name and per phase, and the cache's file count and size."""
    by_name: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    for e in entries:
        by_name[e["name"]] = by_name.get(e["name"], 0) + 1
        phase = next((p for p, end in bounds if e["mtime"] <= end), "after step 1" if bounds else "unknown")
        by_phase[phase] = by_phase.get(phase, 0) + 1
    files = [p for p in Path(cache_dir).rglob("*") if p.is_file()]
    return {"specialisations": len(entries), "kernels": len(by_name),
            "by_name": dict(sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0]))), "by_phase": by_phase,
            "files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "shared_objects": _count(p.name for p in files if p.suffix == ".so")}


def _count(names) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def read_compile_log(path: Path, bounds: list[tuple[str, float]]) -> dict | None:
    """The child's compilation-listener log (cold_start_hook/sitecustomize.py): compiles and cache loads with
    their seconds, per kernel name and per phase, and each compiled specialisation; None without a log."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    compiled = [r for r in rows if not r["cache_hit"]]
    by_name: dict[str, list] = {}
    for r in compiled:
        entry = by_name.setdefault(r["name"], [0, 0.0])
        entry[0] += 1
        entry[1] = round(entry[1] + r["total_us"] / 1e6, 3)
    phases: dict[str, list] = {}
    for r in compiled:
        phase = next((p for p, end in bounds if r["t"] <= end), "after step 1" if bounds else "unknown")
        entry = phases.setdefault(phase, [0, 0.0])
        entry[0] += 1
        entry[1] = round(entry[1] + r["total_us"] / 1e6, 3)
    return {"compiles": len(compiled), "compile_s": round(sum(r["total_us"] for r in compiled) / 1e6, 3),
            "cache_loads": len(rows) - len(compiled),
            "cache_load_s": round(sum(r["total_us"] for r in rows if r["cache_hit"]) / 1e6, 3),
            "by_name": dict(sorted(by_name.items(), key=lambda kv: -kv[1][1])), "by_phase": phases,
            "specialisations": [{k: r[k] for k in ("name", "total_us", "stages_us", "signature", "constexprs",
                                                     "attrs", "num_warps", "num_stages")} for r in compiled]}


def print_compiles(results: dict, cache: dict | None) -> None:
    """The Triton compiles: from the listener's log when the child's Triton has one, else the cache listing."""
    for kind, run in results.items():
        log = run.get("triton_compiles")
        if log:
            print(f"{kind}: {log['compiles']} Triton compiles ({log['compile_s']:.1f} s), {log['cache_loads']} cache "
                  f"loads ({log['cache_load_s']:.1f} s); compiles by phase (count, s): {log['by_phase']}")
    cold = results.get("cold", {}).get("triton_compiles")
    if cold:
        print("compiles per kernel (specialisations, s):")
        for name, (n, secs) in cold["by_name"].items():
            print(f"  {n:>3}  {secs:7.2f}  {name}")
    if cache is not None:
        print(f"Triton cache after the cold run: {cache['specialisations']} kernel specialisations of "
              f"{cache['kernels']} kernels, {cache['files']} files, {cache['bytes'] / 2**20:.1f} MiB; by phase "
              f"{cache['by_phase']}; shared objects {cache['shared_objects']}")
        if not cold:
            for name, n in cache["by_name"].items():
                print(f"  {n:>3}  {name}")
