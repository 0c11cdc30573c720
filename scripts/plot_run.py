"""Plot a run: `python -m scripts.plot_run outputs/run/metrics.jsonl [--out DIR]` -> reward/parity/training PNGs.

The plotting code lives in `onpolicy.plots.plot_metrics` (so `RunLogger.close()` can use it without
importing scripts/); this file re-exports it and adds the command line. Left out: comparing several runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from onpolicy.logging import plot_metrics

__all__ = ["plot_metrics", "main"]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="path to metrics.jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: <metrics dir>/plots)")
    args = parser.parse_args(argv)
    path = Path(args.metrics)
    if not path.is_file():
        parser.error(f"metrics: file not found: {path}")
    paths = plot_metrics(path, args.out or path.parent / "plots")
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
