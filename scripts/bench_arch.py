"""bench_arch: decode tok/s of our engine (invariant kernels) per supported checkpoint family, next to Qwen3's.

Each family runs at its published shape (config.json values of the checkpoint named in `FAMILIES`, random bf16
weights, `--layers` to cut the depth), batch 64 by default, 32-token random prompts, 256 new tokens (eos
ignored), greedy, after one warm-up generate (Triton compile, CUDA-graph capture); the timer covers the whole
generate (prefill + decode), as bench_engine's. Prints tok/s and the ratio to qwen3-0.6b; writes
bench_arch.json to --out. `--quick`: 1 layer, small vocab, on CPU (a smoke run, not a measurement).
A family this build refuses (Gemma-3 without the kernels' head_dim 256 and window) is reported as skipped.
Left out: the invariant=False stack and HF generate (bench_engine has them).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys

import torch

from scripts.bench_engine import bench_ours
from scripts.common import default_device, device_name

_LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
           "original_max_position_embeddings": 8192}
FAMILIES = {  # name: config.json values (published checkpoints)
    "qwen3-0.6b": dict(model_type="qwen3", num_hidden_layers=28, vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       rope_theta=1e6, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="qwen2", num_hidden_layers=24, vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6,
                         tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768),
    "llama-3.2-1b": dict(model_type="llama", num_hidden_layers=16, vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         rope_theta=5e5, rope_scaling=_LLAMA3, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "olmo2-1b": dict(model_type="olmo2", num_hidden_layers=16, vocab_size=100352, hidden_size=2048,
                     intermediate_size=8192, num_attention_heads=16, num_key_value_heads=16, rope_theta=5e5),
    "smollm3-3b": dict(model_type="smollm3", num_hidden_layers=36, vocab_size=128256, hidden_size=2048,
                       intermediate_size=11008, num_attention_heads=16, num_key_value_heads=4, rope_theta=5e6,
                       tie_word_embeddings=True, no_rope_layer_interval=4),
    "mistral-7b-v0.3": dict(model_type="mistral", num_hidden_layers=32, vocab_size=32768, hidden_size=4096,
                            intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                            rope_theta=1e6, sliding_window=None, rms_norm_eps=1e-5),
    "phi-4": dict(model_type="phi3", num_hidden_layers=40, vocab_size=100352, hidden_size=5120,
                  intermediate_size=17920, num_attention_heads=40, num_key_value_heads=10, rope_theta=2.5e5,
                  sliding_window=None, rms_norm_eps=1e-5),
    "gemma-3-1b": dict(model_type="gemma3_text", num_hidden_layers=26, vocab_size=262144, hidden_size=1152,
                       intermediate_size=6912, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                       rope_theta=1e6, rope_local_base_freq=1e4, sliding_window=512, sliding_window_pattern=6,
                       query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
}


def build(name: str, device: str, layers: int | None, quick: bool):
    """A CausalLM of family `name` with N(0, 0.02) weights drawn on `device` (fast at 14B; values are only
    for timing), norms 1, biases 0."""
    from onpolicy.model import CausalLM, ModelConfig

    hf = dict(FAMILIES[name], max_position_embeddings=4096, dtype="float32" if quick else "bfloat16")
    if layers or quick:
        hf["num_hidden_layers"] = 1 if quick else layers
        hf.pop("no_rope_layer_interval", None)
    if quick:
        hf["vocab_size"] = 512
    model = CausalLM(ModelConfig.from_hf(hf), init=False).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if pname.endswith("norm.weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/bench_arch")
    ap.add_argument("--archs", default=",".join(FAMILIES), help=f"comma separated subset of {', '.join(FAMILIES)}")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--layers", type=int, default=None, help="cut every family to this many layers")
    ap.add_argument("--quick", action="store_true", help="1 layer, vocab 512, CPU, batch 2, 4 new tokens")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"--archs: unknown {bad}; allowed: {', '.join(FAMILIES)}")
    from onpolicy import determinism

    determinism.enable(seed=0)
    device = default_device(args.quick)
    batch, new_tokens = (2, 4) if args.quick else (args.batch, args.max_tokens)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name in names:
        try:
            model = build(name, device, args.layers, args.quick)
        except ValueError as e:
            print(f"{name:>16}  skipped: {e}", flush=True)
            continue
        for _, toks, secs in bench_ours(model, True, [batch], args.prompt_len, new_tokens, device == "cuda", 0):
            results.append({"arch": name, "batch": batch, "tokens": toks, "seconds": round(secs, 3),
                            "tok_s": round(toks / secs, 1)})
            print(f"{name:>16}  batch {batch}: {toks} tokens in {secs:.2f} s = {toks / secs:.1f} tok/s", flush=True)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        with open(os.path.join(args.out, "bench_arch.json"), "w") as f:
            json.dump({"device": device_name(device), "results": results}, f, indent=2)
    base = next((r["tok_s"] for r in results if r["arch"] == "qwen3-0.6b"), None)
    if base:
        for r in results:
            print(f"{r['arch']:>16}: {r['tok_s'] / base:.2f}x qwen3-0.6b")
    return 0


if __name__ == "__main__":
    sys.exit(main())
