"""Evaluate a policy on a held-out set: `python recipes/eval.py --config configs/tiny-cpu.yaml
--model.path outputs/tiny-cpu/checkpoints/step-300/policy [--eval.num_samples 8 --eval.temperature 1
--eval.pass_k '[1,4,8]'] [--compare other/eval.jsonl]`.

The training config file and overrides (`onpolicy.config.parse_args`; the `eval` section and `data.eval_dataset`
choose what is measured: `--help` lists them). Writes `<logging.output_dir>/eval.jsonl` (one row per problem) and
`eval_summary.json`, and prints a summary line (definitions: `onpolicy.evaluation`). `--compare A.jsonl` then
prints which problems flipped from A to this evaluation; `--compare A.jsonl B.jsonl` compares two files without
evaluating. `--model.path DIR` on the command line drops the config file's `model.tiny` block, so the training
config serves a saved policy as is. The kernels are training's (`trainer.invariant`); on the invariant kernels
the results are the same bits for any engine batch limits and CPU thread count. Left out: several processes
here (the trainer's `eval_every` evaluation shares problems across ranks under `accelerate launch`).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None):
    from onpolicy.cli import command

    return command(_run, argv)


def split_compare(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without `--compare`, the one or two files after it)."""
    if "--compare" not in argv:
        return argv, []
    i = argv.index("--compare")
    files = [a for a in argv[i + 1:i + 3] if not a.startswith("--")][:2]
    if not files:
        raise ValueError("--compare: expects one eval.jsonl (compared with this evaluation) or two")
    return argv[:i] + argv[i + 1 + len(files):], files


def saved_policy_argv(argv: list[str]) -> list[str]:
    """`--model.path DIR` given on the command line drops the config file's `model.tiny` block (it describes the
    built-in tiny model, not a saved policy), so the training config can be reused as is."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model.path"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--model.path=")]
    return ["--model.tiny", "{}", *argv] if paths and paths[-1] != "tiny" else argv


def _compare(before: str, after: str) -> dict:
    from onpolicy.evaluation import compare_lines, compare_results, read_results

    diff = compare_results(read_results(before), read_results(after))
    print("\n".join(compare_lines(diff, before, after)), flush=True)
    return diff


def _run(argv: list[str]) -> dict:
    argv, compare = split_compare(argv)
    if len(compare) == 2:
        return {"compare": _compare(*compare)}
    from onpolicy.config import parse_args

    cfg = parse_args(saved_policy_argv(argv))
    from onpolicy.eval_run import run_evaluation
    from onpolicy.evaluation import summary_line

    records, summary, paths = run_evaluation(cfg)
    print(summary_line(summary, cfg.eval.temperature), flush=True)
    print(f"wrote {paths[0]} and {paths[1]}", flush=True)
    if compare:
        summary["compare"] = _compare(compare[0], str(paths[0]))
    return summary


if __name__ == "__main__":
    main()
