"""doctor: find the first op where the sampler and the trainer disagree for one prompt.

Runs the engine (sampler) on `--prompt` among `--batch` concurrent filler requests, recording every
submodule's output and every `kernels` op the model calls (rope, attention, silu_mul, ...) for the probe
sequence's rows, step by step; then runs the trainer's packed forward (`sequence_logprobs` path, with the
filler completions packed beside it) with the same recording. Rows are aligned by token position and
compared in execution order. Prints the first differing module/op (with max |diff|), or "bitwise equal".

    python -m scripts.doctor --model tiny --prompt "12+7=" [--device cuda --dtype bfloat16 --invariant 0]

Left out: CUDA graphs (hooks do not fire on replay, so the engine runs eagerly here), backward passes, and
ops called outside the model's forward other than the final logprob.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import AttentionMetadata
from onpolicy.model.logprobs import pack_sequences
from scripts.common import build_model, default_device

TRACED_OPS = ("rope", "attention", "attention_varlen", "silu_mul", "gelu_tanh_mul", "rms_norm", "linear", "add_rms_norm",
              "qk_norm_rope")


class Recorder:
    """Captures [rows, ...] outputs of modules and kernels ops, keyed by module path / op call."""

    def __init__(self, model):
        self.model = model
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.rows: list[tuple[int, int, int]] = []  # (row offset in this forward, first position, count)
        self.store: dict[str, dict[int, torch.Tensor]] = {}
        self.handles = []

    def _record(self, key: str, out) -> None:
        if isinstance(out, tuple):  # (h, y) of add_rms_norm, (q, k, v) of qk_norm_rope, a decoder layer's pair
            for i, part in enumerate(out):
                self._record(f"{key}[{i}]", part)
            return
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return
        if key not in self.store:
            self.store[key] = {}
            self.order.append(key)
        for row0, pos0, n in self.rows:
            for i in range(n):
                if row0 + i < out.shape[0]:
                    self.store[key][pos0 + i] = out[row0 + i].detach().float().cpu().clone()

    def _key(self, base: str) -> str:
        k = self.calls.get(base, 0)
        self.calls[base] = k + 1
        return f"{base}#{k}" if k else base

    @contextlib.contextmanager
    def forward(self, rows: list[tuple[int, int, int]]):
        """One forward in which the probe occupies `rows`."""
        self.rows, self.calls = rows, {}
        try:
            yield
        finally:
            self.rows = []

    @contextlib.contextmanager
    def attached(self):
        for name, mod in self.model.named_modules():
            if not name:
                continue
            self.handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: self.stack.append(n)))
            self.handles.append(mod.register_forward_hook(self._post(name)))
        originals = {op: getattr(kernels, op) for op in TRACED_OPS}
        for op, fn in originals.items():
            setattr(kernels, op, self._wrap(op, fn))
        try:
            yield self
        finally:
            for op, fn in originals.items():
                setattr(kernels, op, fn)
            for h in self.handles:
                h.remove()
            self.handles = []

    def _post(self, name):
        def hook(mod, args, out):
            self.stack.pop()
            if self.rows:
                self._record(self._key(name), out)
        return hook

    def _wrap(self, op, fn):
        label = "attention" if op in ("attention", "attention_varlen") else op

        def traced(*args, **kwargs):
            out = fn(*args, **kwargs)
            if self.rows and self.stack:
                self._record(self._key(f"{self.stack[-1]}:{label}"), out)
            return out
        return traced


def _stack_rows(entry: dict[int, torch.Tensor], n: int) -> torch.Tensor | None:
    if any(p not in entry for p in range(n)):
        return None
    return torch.stack([entry[p] for p in range(n)])


def _generate_traced(llm, sampler: Recorder, prompts, params, probe_at: int, invariant: bool) -> list:
    """The engine's outputs for every prompt, with `sampler` recording the rows of prompt `probe_at`."""
    runner = llm.runner
    plain_forward = runner.forward
    probe_seq = {}

    def traced_forward(chunks):
        rows, off = [], 0
        for c in chunks:
            if c.seq.request_id == probe_seq.get("rid"):
                rows.append((off, c.start, c.num_tokens))
            off += c.num_tokens
        with sampler.forward(rows):
            return plain_forward(chunks)

    runner.forward = traced_forward
    with sampler.attached(), kernels.invariant_mode(invariant):
        rids = [llm.add_request(p, sp) for p, sp in zip(prompts, params)]
        probe_seq["rid"] = rids[probe_at]
        results = {}
        while llm.has_unfinished():
            for out in llm.step():
                results[out.request_id] = out
    return [results[r] for r in rids]


def diagnose(model, tokenizer, prompt_ids: list[int], *, max_tokens=8, temperature=1.0, batch=4, seed=0,
             invariant=True, engine_config: EngineConfig | None = None) -> dict:
    """Returns {"equal": bool, "first_diff": (key, max_abs) | None, "num_diff": int, "num_compared": int,
    "completion": token ids, "logprob_equal": bool}."""
    base = engine_config or EngineConfig(max_num_batched_tokens=64, max_num_seqs=max(batch, 1))
    # eager (hooks do not fire on graph replay); no prefix cache, so every probe position is computed here
    cfg = dataclasses.replace(base, use_cuda_graphs=False, enable_prefix_caching=False)
    llm = LLM(model, tokenizer, cfg)
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    fillers = [torch.randint(4, vocab, (int(torch.randint(1, 3 * len(prompt_ids) + 2, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(batch - 1)]
    prompts = fillers[: batch // 2] + [prompt_ids] + fillers[batch // 2 :]
    probe_at = batch // 2
    params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i, ignore_eos=True)
              for i in range(len(prompts))]

    sampler = Recorder(model)
    outs = _generate_traced(llm, sampler, prompts, params, probe_at, invariant)
    completion = outs[probe_at].outputs[0].token_ids
    engine_lp = outs[probe_at].outputs[0].logprobs

    # Trainer side: one packed forward over all (prompt, completion) pairs (packed as `sequence_logprobs`
    # packs them), probe rows recorded.
    trainer = Recorder(model)
    device = model.lm_head_weight.device
    ids, pos, cu, score_rows, targets, counts = pack_sequences(
        [o.prompt_token_ids for o in outs], [o.outputs[0].token_ids for o in outs], device)
    n_ctx = len(prompt_ids) + len(completion) - 1  # positions that produce the probe's logprobs
    skip = sum(counts[:probe_at])
    probe_rows = slice(skip, skip + counts[probe_at])  # the probe's entries of score_rows / targets
    t = temperature if temperature > 0 else 1.0
    mode = kernels.invariant_mode(invariant)
    with torch.no_grad(), mode, trainer.attached(), trainer.forward([(int(cu[probe_at]), 0, n_ctx)]):
        hidden = model(ids, pos, AttentionMetadata.for_training(cu))
        trainer_lp = model.token_logprobs(hidden[score_rows[probe_rows]], targets[probe_rows], t)

    first, n_diff, n_cmp = _first_difference(sampler, trainer, n_ctx)
    lp_equal = bool(torch.equal(engine_lp.cpu(), trainer_lp.float().cpu()))
    return {"equal": first is None and lp_equal, "first_diff": first, "num_diff": n_diff, "num_compared": n_cmp,
            "completion": completion, "logprob_equal": lp_equal,
            "logprob_max_diff": float((engine_lp.cpu() - trainer_lp.float().cpu()).abs().max())}


def _first_difference(sampler: "Recorder", trainer: "Recorder", n_ctx: int):
    """(first differing (op key, max |diff|) in the trainer's op order or None, ops differing, ops compared)."""
    first, n_diff, n_cmp = None, 0, 0
    for key in trainer.order:
        a = _stack_rows(sampler.store.get(key, {}), n_ctx)
        b = _stack_rows(trainer.store[key], n_ctx)
        if a is None or b is None or a.shape != b.shape:
            continue
        n_cmp += 1
        if not torch.equal(a, b):
            n_diff += 1
            if first is None:
                first = (key, float((a - b).abs().max()))
    return first, n_diff, n_cmp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help='"tiny" or a local HF model directory')
    ap.add_argument("--prompt", default="12+7=", help="prompt text (or comma-separated token ids with --ids)")
    ap.add_argument("--ids", action="store_true", help="--prompt is comma-separated token ids")
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=4, help="concurrent requests in the engine (probe included)")
    ap.add_argument("--invariant", type=int, default=1, choices=[0, 1])
    args = ap.parse_args(argv)
    from onpolicy import determinism

    determinism.enable(seed=0)
    model, tok = build_model(args.model, args.device, args.dtype)
    if args.ids:
        ids = [int(x) for x in args.prompt.split(",") if x.strip()]
    else:
        if tok is None:
            raise ValueError("--prompt text needs a tokenizer in --model; pass --ids with token ids")
        ids = tok.encode(args.prompt, add_special_tokens=False)
    report = diagnose(model, tok, ids, max_tokens=args.max_tokens, temperature=args.temperature,
                      batch=args.batch, invariant=bool(args.invariant))
    print(f"compared {report['num_compared']} module/op outputs over {len(ids) + len(report['completion']) - 1} positions")
    if report["equal"]:
        print("bitwise equal: sampler and trainer agree on every module, op and logprob")
        return 0
    if report["first_diff"]:
        key, diff = report["first_diff"]
        print(f"FIRST DIFFERENCE: {key}  (max |diff| {diff:.3e}); {report['num_diff']} outputs differ in all")
    print(f"logprobs equal: {report['logprob_equal']} (max |diff| {report['logprob_max_diff']:.3e})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
