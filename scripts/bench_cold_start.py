"""bench_cold_start: seconds from `python recipes/grpo.py` to the end of RL step 1, cold vs warm Triton cache.

First with an empty Triton cache (cold: every kernel compiles), then with the cache that run filled (warm), each
split by stage.

Default (GPU): configs/qwen3-0.6b-gsm8k.yaml's shape and settings on a random-weight Qwen3-0.6B-shape checkpoint
and a GSM8K-format JSON-lines file written offline first (scripts/cold_start_inputs.py: a character tokenizer,
~200-token prompts). Each run is a fresh `python recipes/grpo.py` process with TRITON_CACHE_DIR set to the
bench's own cache directory (new and empty for the cold run) and `--trainer.steps 1`, no checkpoints, console
logging only; the clock starts when the process is spawned and stops when its "step 1 |" line arrives (the
process is then killed: the final save is not part of the measurement). Stages come from the child's lines
(stamped on arrival) and its own figures: start-up (interpreter, imports, config) up to the "run directory:"
line; the "set-up:" line's stages (tokenizer and data, model, SFT, optimizer, engine, logger); step 1's
time/sample, scoring and time/train (metrics.jsonl). The cold-minus-warm column is what compiling costs in each
stage. Triton's side (scripts/cold_start_triton.py): each child runs with a compilation listener
(scripts/cold_start_hook/sitecustomize.py, first on its PYTHONPATH) that logs every kernel compile and cache load
with its seconds and specialisation -- per kernel and per phase (set-up, step-1 sampling, step-1 scoring +
training) in the table; and the cold run's cache directory is listed (one entry per specialisation, placed in a
phase by its write time; this part works on a Triton without the listener).
Prints the table; writes bench_cold_start.json and the compilation logs (compile-log-<run>.jsonl, input of
scripts/bench_compile.py: the same specialisations compiled serially vs in parallel) to --out. `--quick`: the
tiny shape on the CPU (2 prompts x 2 samples x 8 tokens; no Triton compiles there): a smoke run, not a
measurement. `--stop-ids N` makes completions
end at spread lengths, as a real model's do (random weights otherwise run every completion to max_tokens, so
the decode batch never shrinks and only its largest CUDA-graph bucket is captured).
Left out: a cold page cache and .pyc files (the checkpoint was just written; imports are warm), the real Qwen3
tokenizer, several GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scripts.cold_start_inputs import write_checkpoint, write_gsm8k
from scripts.cold_start_triton import print_compiles, read_compile_log, summarize_cache, triton_cache_entries
from scripts.common import default_device, device_name

REPO = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "cold_start_hook"
CONFIG = "configs/qwen3-0.6b-gsm8k.yaml"
QUICK = ["--model.device", "cpu", "--model.dtype", "float32", "--trainer.prompts_per_step", "2",
         "--sampling.num_generations", "2", "--sampling.max_tokens", "8", "--data.max_prompt_tokens", "256",
         "--engine.use_cuda_graphs", "false", "--trainer.num_threads", "1"]
SETUP_LINE = re.compile(r"^set-up: ([\d.]+) s \((.*)\)$")
SETUP_PART = re.compile(r"(.+?) ([\d.]+)(?:, |$)")


def child_command(config: str, model: str, data: str, out: str, extra: list[str]) -> list[str]:
    """The recipe's command line for one measured run: one step, console only, no checkpoints, no plots."""
    return [sys.executable, str(REPO / "recipes" / "grpo.py"), "--config", config, "--model.path", model,
            "--data.dataset", data, "--trainer.steps", "1", "--trainer.save_every", "0",
            "--logging.output_dir", out, "--logging.report_to", "[console]", "--logging.plot", "false",
            "--logging.progress_bar", "false", "--logging.log_every", "1", *extra]


def run_child(cmd: list[str], triton_cache: str, timeout: float, compile_log: str | None = None) -> dict:
    """Spawn `cmd`, stamp each output line (seconds since spawn), stop at the "step 1 |" line; -> {"lines":
    [[t, text], ...], "spawn_wall": time.time() at spawn, "step1_s": t of that line or None, "rc"}."""
    env = dict(os.environ, TRITON_CACHE_DIR=triton_cache, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    if compile_log:  # the compilation listener (cold_start_hook/sitecustomize.py)
        env["COLD_START_TRITON_LOG"] = compile_log
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK), os.environ.get("PYTHONPATH")) if p)
    env.pop("TRITON_INTERPRET", None)
    spawn_wall, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, step1 = [], None
    watchdog = threading.Timer(timeout, proc.kill)  # a child that hangs without output is stopped too
    watchdog.start()
    try:
        for text in proc.stdout:
            t = time.perf_counter() - t0
            lines.append([round(t, 3), text.rstrip("\n")])
            if text.startswith("step 1 |"):
                step1 = t
                break
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return {"lines": lines, "spawn_wall": spawn_wall, "step1_s": step1, "rc": proc.returncode}


def _first(lines: list, prefix: str) -> tuple[float, str] | None:
    return next(((t, s) for t, s in lines if s.startswith(prefix)), None)


def stages(run: dict, metrics: dict | None) -> dict:
    """Seconds per stage of one run (see the module doc); missing markers leave their stages out."""
    out: dict[str, float] = {}
    rundir, setup = _first(run["lines"], "run directory:"), _first(run["lines"], "set-up:")
    if rundir:
        out["start-up: interpreter, imports, config"] = rundir[0]
    match = SETUP_LINE.match(setup[1]) if setup else None
    if match:
        for name, secs in SETUP_PART.findall(match.group(2)):
            out[f"set-up: {name}"] = float(secs)
    if metrics:
        out["step 1: sampling"] = metrics["time/sample"]
        out["step 1: scoring"] = metrics["time/step"] - metrics["time/sample"] - metrics["time/train"]
        out["step 1: training"] = metrics["time/train"]
    if run["step1_s"] is not None:
        out["other (run directory, gaps)"] = run["step1_s"] - sum(out.values())
        out["total to the end of step 1"] = run["step1_s"]
    return out


def read_metrics(out_dir: str) -> dict | None:
    """Step 1's row of metrics.jsonl (written before its console line), or None."""
    path = Path(out_dir) / "metrics.jsonl"
    for _ in range(20):  # the child was killed right after printing: the row is already on disk
        if path.exists() and path.read_text().strip():
            return json.loads(path.read_text().splitlines()[0])
        time.sleep(0.05)
    return None


def phase_bounds(run: dict, metrics: dict | None) -> list[tuple[str, float]]:
    """(phase, wall-clock end) in order: set-up (the "set-up:" line), step-1 sampling and step-1 training."""
    setup = _first(run["lines"], "set-up:")
    if setup is None or metrics is None or run["step1_s"] is None:
        return []
    setup_end = run["spawn_wall"] + setup[0]
    step_end = run["spawn_wall"] + run["step1_s"]
    return [("set-up", setup_end), ("step 1 sampling", step_end - metrics["time/step"] + metrics["time/sample"]),
            ("step 1 scoring + training", step_end + 1.0)]


def print_table(results: dict) -> None:
    names = list(dict.fromkeys(k for r in results.values() for k in r["stages"]))
    cold, warm = (results.get(k, {}).get("stages", {}) for k in ("cold", "warm"))
    print(f"{'stage':<42} {'cold s':>8} {'warm s':>8} {'cold - warm':>12}")
    for name in names:
        c, w = cold.get(name), warm.get(name)
        diff = f"{c - w:12.1f}" if c is not None and w is not None else f"{'':>12}"
        fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(f"{name:<42} {fmt(c)} {fmt(w)} {diff}")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/bench_cold_start")
    ap.add_argument("--quick", action="store_true", help="tiny shape on the CPU, 2x2x8: a smoke run")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--runs", default="cold,warm", help="cold, warm or both (warm reuses the cold run's cache)")
    ap.add_argument("--workdir", default=None, help="checkpoint, data, caches and run outputs (default: a temp "
                    "dir, deleted at the end); an existing checkpoint there is reused")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is stopped")
    ap.add_argument("--stop-ids", type=int, default=0, metavar="N",
                    help="N extra stop token ids (the vocab's last N): random-weight completions then end at spread "
                    "lengths (geometric, mean ~vocab/N tokens) as a real model's do, so the decode tail runs the "
                    "smaller batch sizes (their CUDA graphs and kernel specialisations); 0: every completion "
                    "runs to sampling.max_tokens")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="more recipe overrides, e.g. --set engine.use_cuda_graphs=false")
    args = ap.parse_args(argv)
    if any("=" not in kv for kv in args.set):
        ap.error(f"--set: {args.set}; allowed: SECTION.FIELD=VALUE items")
    args.overrides = [x for kv in args.set for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    args.runs = [r for r in args.runs.split(",") if r]
    bad = [r for r in args.runs if r not in ("cold", "warm")]
    if bad or not args.runs:
        ap.error(f"--runs: unknown {bad}; allowed: cold, warm")
    return args


def prepare(work: Path, quick: bool) -> tuple[Path, Path]:
    """The checkpoint and the data file in `work` (written once; reused when present)."""
    model, data = work / ("tiny-model" if quick else "qwen3-0.6b-random"), work / "gsm8k" / "train.jsonl"
    if not (model / "model.safetensors").exists():
        t0 = time.perf_counter()
        write_checkpoint(model, "tiny" if quick else "0.6b")
        print(f"wrote the random-weight checkpoint {model} in {time.perf_counter() - t0:.1f} s", flush=True)
    if not data.exists():
        write_gsm8k(data, 512)
    return model, data


def recipe_overrides(args, vocab: int) -> list[str]:
    """The recipe arguments beyond child_command's: --quick's, --stop-ids' and --set's."""
    if not 0 <= args.stop_ids < vocab - 4:
        raise SystemExit(f"--stop-ids: {args.stop_ids}; allowed: 0 to {vocab - 5} (the vocab has {vocab} ids)")
    stop = ["--sampling.stop_token_ids", str(list(range(vocab - args.stop_ids, vocab)))] if args.stop_ids else []
    return (QUICK if args.quick else []) + stop + args.overrides


def measure(args, work: Path, model: Path, data: Path) -> tuple[dict, dict | None]:
    cache = work / "triton-cache"
    extra = recipe_overrides(args, json.loads((model / "config.json").read_text())["vocab_size"])
    results, cache_summary = {}, None
    for kind in args.runs:
        if kind == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        out = work / f"run-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = child_command(args.config, str(model), str(data), str(out), extra)
        shown = [a if len(a) < 80 else a[:40] + " ... " + a[-20:] for a in cmd[1:]]
        print(f"== {kind}: {' '.join(shown)}", flush=True)
        log = work / f"compile-log-{kind}.jsonl"
        log.unlink(missing_ok=True)
        run = run_child(cmd, str(cache), args.timeout, str(log))
        if run["step1_s"] is None:
            tail = "\n".join(s for _, s in run["lines"][-30:])
            raise SystemExit(f"{kind} run: no 'step 1 |' line (exit {run['rc']}); last output:\n{tail}")
        metrics = read_metrics(str(out))
        bounds = phase_bounds(run, metrics)
        if log.exists():  # kept beside the JSON: scripts/bench_compile.py --log compiles it again
            shutil.copy(log, Path(args.out) / log.name)
        results[kind] = {"stages": stages(run, metrics), "lines": run["lines"],
                         "triton_compiles": read_compile_log(log, bounds)}
        print(f"   step 1 ended {run['step1_s']:.1f} s after the spawn", flush=True)
        if kind == "cold":
            cache_summary = summarize_cache(triton_cache_entries(str(cache)), bounds, str(cache))
    return results, cache_summary


def main(argv=None) -> int:
    args = parse(argv)
    device = "cpu" if args.quick else default_device()
    if device == "cpu" and not args.quick:
        raise SystemExit("bench_cold_start: no GPU here; use --quick for the CPU smoke run")
    os.makedirs(args.out, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cold_start_"))
    try:
        model, data = prepare(work, args.quick)
        results, cache = measure(args, work, model, data)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    print_compiles(results, cache)
    meta = {"device": device_name(device), "config": args.config, "quick": args.quick, "stop_ids": args.stop_ids,
            "overrides": args.set}
    with open(os.path.join(args.out, "bench_cold_start.json"), "w") as f:
        json.dump({"meta": meta, "runs": results, "triton_cache": cache}, f, indent=2)
    print(f"wrote {args.out}/bench_cold_start.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
