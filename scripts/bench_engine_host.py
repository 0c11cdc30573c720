"""bench_engine_host: the engine's host work per decode step on CPU, with a runner that returns tokens at once.

`LLM.generate` runs its real scheduler, block manager, stop checks and bookkeeping; `runner.step` is replaced
(and `runner.launch`, the async path) by a stand-in that returns a fixed token (and logprob) for every sampling
chunk without any forward, so the time measured is the host Python the engine spends per step (with async
scheduling, the default, that is the work the GPU step hides; `--sync` for the synchronous engine). With `--stage` the stand-in also writes the
decode step's inputs into the CUDA-graph staging buffers (`DecodeGraphs.stage`, CPU tensors here), timed
apart. Prints host ms per decode step at each batch size. Left out: the GPU, the model, the runner's own
per-step Python (`ModelRunner.step`, `sample`), tokenizer decoding (token-id prompts, no stop strings).
These are CPU figures on the machine that runs it, not the H100's.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model.tiny import build_tiny

PROMPT_LEN = 32
TOKEN = 7  # what the stand-in samples every step (never eos: eos is ignored anyway)


class _Done:
    """A stand-in runner.InFlight: the outputs are ready at once."""

    def __init__(self, out):
        self.out = out

    def result(self):
        return self.out


def make_llm(batch: int, new_tokens: int, block_size: int, stage: bool, sync: bool) -> tuple[LLM, dict]:
    """An LLM on a 1-layer tiny model whose runner returns TOKEN for each sampling chunk instantly (sync `step`
    and async `launch`)."""
    model, _ = build_tiny(seed=0, num_hidden_layers=1, max_position_embeddings=PROMPT_LEN + new_tokens + block_size)
    per_seq = -(-(PROMPT_LEN + new_tokens) // block_size)
    cfg = EngineConfig(num_blocks=batch * per_seq, block_size=block_size, max_num_seqs=max(batch, 1),
                       max_num_batched_tokens=max(2048, batch * PROMPT_LEN), enable_prefix_caching=True,
                       async_scheduling=not sync)
    llm = LLM(model.eval(), None, cfg)
    spent = {"stage": 0.0, "decode_steps": 0}
    graphs = None
    if stage:
        from onpolicy.engine.graphs import DecodeGraphs, bucket_sizes

        graphs = DecodeGraphs(llm.runner)
        buckets = bucket_sizes(cfg.max_num_seqs)

    def fake_step(chunks):
        seqs = [c.seq for c in chunks if c.samples]
        if len(chunks) == len(seqs) and all(c.num_tokens == 1 for c in chunks):
            spent["decode_steps"] += 1
            if graphs is not None:
                t = time.perf_counter()
                graphs.stage(seqs, next(x for x in buckets if x >= len(seqs)))
                spent["stage"] += time.perf_counter() - t
        n = len(seqs)
        return [TOKEN] * n, [-1.0] * n

    llm.runner.step = fake_step
    llm.runner.launch = lambda chunks, seqs: _Done(fake_step(chunks))
    return llm, spent


def run(batch: int, new_tokens: int, block_size: int, stage: bool, profile: bool, sync: bool) -> dict:
    llm, spent = make_llm(batch, new_tokens, block_size, stage, sync)
    prompts = [[(i * 31 + j) % 50 + 4 for j in range(PROMPT_LEN)] for i in range(batch)]  # distinct prompts
    sp = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    outs = llm.generate(prompts, sp)
    if prof is not None:
        prof.disable()
    dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == new_tokens for o in outs)
    steps = llm.stats["steps"]
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return {"batch": batch, "steps": steps, "decode_steps": spent["decode_steps"],
            "host_ms_per_step": dt * 1e3 / steps, "stage_ms_per_decode_step":
            spent["stage"] * 1e3 / max(1, spent["decode_steps"])}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64,256", help="comma-separated batch sizes")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--stage", action="store_true", help="also write the CUDA-graph staging buffers (timed apart)")
    ap.add_argument("--sync", action="store_true", help="engine.async_scheduling=false (the synchronous engine)")
    ap.add_argument("--profile", action="store_true", help="cProfile each run (top 15 by own time)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch; the fastest is reported")
    args = ap.parse_args(argv)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        best = min((run(b, args.new_tokens, args.block_size, args.stage, args.profile, args.sync) for _ in range(args.repeats)),
                   key=lambda r: r["host_ms_per_step"])
        rows.append(best)
        extra = f", staging {best['stage_ms_per_decode_step']:.3f} ms of it" if args.stage else ""
        print(f"batch {b:4d}: {best['host_ms_per_step']:.3f} host ms/step over {best['steps']} steps "
              f"({best['host_ms_per_step'] * 1e3 / b:.2f} us per sequence){extra}", flush=True)
    return rows


if __name__ == "__main__":
    main()
