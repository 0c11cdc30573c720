"""True on-policy vs truncated importance sampling vs neither, on the embedded task in bf16 (CPU, minutes).

    python -m scripts.onpolicy_vs_is [--steps 100] [--out outputs/onpolicy-vs-is] [--plot-only] [-- EXTRA...]

Three GRPO runs of configs/tiny-cpu.yaml with the same seed, data and SFT warm start (one cache,
`<out>/sft-cache`), model.dtype bfloat16:
  (a) trainer.invariant: true                       -- sampler and trainer logprobs bitwise equal
  (b) trainer.invariant: false                      -- the usual kernels, no correction
  (c) trainer.invariant: false, trainer.tis_cap: 2  -- truncated importance sampling
each with the held-out evaluation every `--eval-every` steps (greedy, `--eval-examples` problems). The arms run
one after another (`<out>/<arm>/metrics.jsonl`); then one PNG, `<out>/onpolicy_vs_is.png`, plots per step the
sampler-vs-trainer KL, max |logprob diff|, reward and held-out accuracy of the three arms (date and hardware in
its title), and `<out>/numbers.json` holds the figures docs/onpolicy-vs-is.md quotes. Extra arguments after
`--` go to every arm (e.g. `-- --trainer.lr 1e-3`); `--gpu` runs a wider model on CUDA (`GPU_PRESET`).
Left out: several seeds per arm, models of a real checkpoint's size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARMS = {
    "a_invariant": ("(a) invariant: true", ["--trainer.invariant", "true"]),
    "b_no_correction": ("(b) invariant: false, no correction", ["--trainer.invariant", "false"]),
    "c_tis": ("(c) invariant: false, tis_cap 2", ["--trainer.invariant", "false", "--trainer.tis_cap", "2.0"]),
}
# `--gpu`: the same task on CUDA with a wider, deeper model (Qwen3-0.6B's attention heads, 4 layers, ~60 M
# parameters) where torch's bf16 GPU kernels (cuBLAS, flash attention) give the sampler and the trainer different
# bits; smaller steps than the CPU default's for the wider model. Arguments after `--` still apply after it.
GPU_PRESET = ["--model.device", "cuda", "--engine.use_cuda_graphs", "true", "--model.tiny.hidden_size", "1024",
              "--model.tiny.intermediate_size", "3072", "--model.tiny.num_hidden_layers", "4",
              "--model.tiny.num_attention_heads", "16", "--model.tiny.num_key_value_heads", "8",
              "--model.tiny.head_dim", "128", "--trainer.lr", "2e-4", "--trainer.sft_lr", "1e-3"]
STYLES = {"a_invariant": "-", "b_no_correction": "-", "c_tis": "--"}  # (c) dashed: it may lie on (b)
PANELS = (("onpolicy/kl", "sampler vs trainer KL"), ("onpolicy/logprob_diff/max", "max |logprob diff|"),
          ("reward/mean", "reward (train batch)"), ("eval/accuracy", "held-out accuracy (greedy)"))


def arm_command(args, arm: str) -> list[str]:
    return [sys.executable, str(ROOT / "recipes/grpo.py"), "--config", str(ROOT / "configs/tiny-cpu.yaml"),
            "--model.dtype", "bfloat16", "--trainer.steps", str(args.steps), "--trainer.eval_every",
            str(args.eval_every), "--eval.num_examples", str(args.eval_examples), "--logging.output_dir",
            str(Path(args.out) / arm), "--logging.run_name", arm, "--logging.plot", "false",
            "--logging.log_samples_every", "0", "--logging.overwrite", "true",
            "--trainer.sft_cache_dir", str(Path(args.out) / "sft-cache"), *ARMS[arm][1], *args.extra]


def run_arms(args) -> None:
    for arm in ARMS:
        cmd = arm_command(args, arm)
        print("$ " + " ".join(cmd[1:]), flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"{arm}: exit {rc} after {time.time() - t0:.0f}s", flush=True)


def arm_numbers(rows: list[dict]) -> dict:
    def col(key):
        return [r[key] for r in rows if key in r]

    evals, rewards = col("eval/accuracy"), col("reward/mean")
    kl, lp = col("onpolicy/kl"), col("onpolicy/logprob_diff/max")
    tail = min(10, len(rewards))
    return {"steps": len(rows), "max_abs_kl": max(map(abs, kl), default=None), "mean_abs_kl": (
            sum(map(abs, kl)) / len(kl) if kl else None), "max_logprob_diff": max(lp, default=None),
            "reward_first10": sum(rewards[:tail]) / max(tail, 1), "reward_last10": sum(rewards[-tail:]) / max(tail, 1),
            "eval_accuracy_first": evals[0] if evals else None, "eval_accuracy_last": evals[-1] if evals else None,
            "eval_accuracy_max": max(evals, default=None)}


def plot(args) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onpolicy.logging import hardware_name
    from onpolicy.plots import read_metrics

    runs = {arm: read_metrics(p) for arm in ARMS if (p := Path(args.out) / arm / "metrics.jsonl").exists()}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS):
        for arm, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), STYLES[arm], label=ARMS[arm][0], marker="o" if key.startswith("eval/") else None,
                        linewidth=1.2, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key.startswith("onpolicy/"):
            ax.set_yscale("symlog", linthresh=1e-6)
    axes.flat[0].legend(fontsize=9)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    device = args.extra[args.extra.index("--model.device") + 1] if "--model.device" in args.extra else "cpu"
    extra = f" [{' '.join(args.extra)}]" if args.extra else ""
    fig.suptitle(f"embedded reverse task, tiny Qwen3-style model, bf16, same seed/data/SFT start{extra}\n{when}, "
                 f"{hardware_name(device)}", fontsize=10)
    out = Path(args.out) / "onpolicy_vs_is.png"
    fig.savefig(out, dpi=110)
    numbers = {arm: arm_numbers(rows) for arm, rows in runs.items()}
    (Path(args.out) / "numbers.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {out}\n" + json.dumps(numbers, indent=2))
    return numbers


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-examples", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "outputs/onpolicy-vs-is"))
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--gpu", action="store_true", help="the CUDA preset (GPU_PRESET) before the arguments after --")
    args = p.parse_args(argv)
    args.extra = (GPU_PRESET if args.gpu else []) + extra
    if not args.plot_only:
        run_arms(args)
    plot(args)


if __name__ == "__main__":
    main()
