"""Where a profiled trainer update's time goes: torch.profiler's chrome trace -> milliseconds per category.

Device events: CUDA kernels, memcpys and memsets (on a CPU-only run: each CPU op's self time). Each is charged at its
launch (the CUDA runtime or driver call with the same correlation id, else the start of the CPU op its External
id names; without either, the GPU-side projection of the profiler scopes) to one category, in this order:
1. the innermost `onpolicy.profiling` scope open at launch: recompute, optimizer, weight_copy win outright;
2. the outermost op on the launching thread that names a layer kind (`OP_LABELS`: our autograd Functions in
   forward and as backward nodes, torch's GEMM / attention ops): attention (forward, or backward when launched
   in the backward), logprobs, GEMM, norm, elementwise;
3. the logprobs / loss scopes, also for a backward node whose forward op ran in them (autograd's fwd-bwd links);
4. the kernel's name (`KERNEL_PATTERNS`); else "elementwise".
Where device events overlap (several streams) they share that time, so the categories add up to the device's
busy time; host gaps = the update's wall time minus that. Left out: per-stream breakdowns, NCCL (one GPU).
"""
from __future__ import annotations

import bisect
import functools
import json
import re
from collections import defaultdict

from onpolicy.profiling import PREFIX

WINDOW = "profile_trainer/update"  # the scope around the profiled update (and its final synchronize)
CATEGORIES = {
    "gemm": "GEMMs (decoder linears, fwd + bwd)",
    "attention_fwd": "attention forward",
    "attention_bwd": "attention backward",
    "logprobs_loss": "logprobs + loss (LM-head GEMMs, vocab fold, loss)",
    "norms": "norms (RMSNorm, q/k norm + RoPE)",
    "elementwise": "other elementwise (RoPE, SiLU, adds, casts, embedding)",
    "recompute": "checkpoint recompute (forward in backward)",
    "optimizer": "optimizer (grad accumulation, clip, AdamW)",
    "weight_copy": "bf16 copy of the fp32 masters",
    "host_gaps": "host gaps (wall - device busy)",
}
OUTRIGHT = ("recompute", "optimizer", "weight_copy")  # scopes whose kernels are charged to them, whatever they are
LOSS_SCOPES = ("logprobs", "loss")
# Op names (substrings) that say what a kernel launched under them computes; checked outermost op first.
OP_LABELS = (
    ("attention", ("_AttentionVarlen", "attention", "attn", "flash")),
    ("logprobs", ("_TokenLogprobs",)),
    ("norms", ("RMSNorm", "rms_norm", "_QKNormRope")),
    ("gemm", ("_Linear", "_Matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
              "MmBackward", "AddmmBackward", "BmmBackward")),
    ("elementwise", ("_Rope", "_SiluMul", "_GeluTanhMul")),
)
KERNEL_PATTERNS = (
    ("attention", re.compile(r"attn|flash|fmha|attention|_combine_splits", re.I)),
    ("gemm", re.compile(r"gemm|matmul|nvjet|cutlass|xmma|cublas|_piece_sum|splitk", re.I)),
    ("norms", re.compile(r"rms_?norm|qk_norm", re.I)),
)
BACKWARD_KERNEL = re.compile(r"bwd|backward|_dq_|dkdv|dot_do_o|convert_dq", re.I)
BACKWARD_NODE = "autograd::engine::evaluate_function: "
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")


class Timeline:
    """The stack of intervals open at any time (properly nested ones: one thread's ops, or the phase scopes)."""

    def __init__(self, intervals):
        self.starts, self.stacks = [float("-inf")], [()]
        stack: list = []
        for start, end, name in sorted(intervals, key=lambda x: (x[0], -x[1])):
            self._close(stack, start)
            stack.append((end, name))
            self._mark(start, stack)
        self._close(stack, float("inf"))

    def _close(self, stack, t) -> None:
        while stack and stack[-1][0] <= t:
            end = stack.pop()[0]
            self._mark(end, stack)

    def _mark(self, t, stack) -> None:
        names = tuple(n for _, n in stack)
        if self.starts[-1] == t:
            self.stacks[-1] = names
        else:
            self.starts.append(t)
            self.stacks.append(names)

    def at(self, t) -> tuple:
        """Names of the intervals open at t, outermost first."""
        return self.stacks[bisect.bisect_right(self.starts, t) - 1]


@functools.lru_cache(maxsize=None)
def _label(ops: tuple) -> str | None:
    for op in ops:
        for label, subs in OP_LABELS:
            if any(s in op for s in subs):
                return label
    return None


def categorize(scope: str | None, ops: tuple, kernel: str, fwd_scope: str | None = None) -> str:
    """The category of one device event (see the module docstring): `scope` the innermost phase scope at launch
    (without PREFIX), `ops` the launching thread's open ops (outermost first), `fwd_scope` the phase scope of
    the forward op of the backward node it runs under."""
    if scope in OUTRIGHT:
        return scope
    label = _label(ops) or next((k for k, pattern in KERNEL_PATTERNS if pattern.search(kernel)), None)
    if label == "attention":
        backward = scope == "backward" or any(op.startswith(BACKWARD_NODE) for op in ops)
        return "attention_bwd" if backward or BACKWARD_KERNEL.search(kernel) else "attention_fwd"
    if label == "logprobs" or scope in LOSS_SCOPES or fwd_scope in LOSS_SCOPES:
        return "logprobs_loss"
    return label or "elementwise"


def _spans(events, cat: str, strip: str = "") -> list:
    return [(e["ts"], e["ts"] + e["dur"], (e["name"][len(strip):], e["ts"])) for e in events
            if e.get("cat") == cat and e["name"].startswith(strip)]


def _launch_points(events) -> tuple[dict, dict]:
    """({correlation id: (tid, ts) of the runtime / driver launch call}, {External id: (tid, ts) of that CPU op})."""
    launches, ops = {}, {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") in LAUNCH_CATS and "correlation" in args:
            launches[args["correlation"]] = (e["tid"], e["ts"])
        elif e.get("cat") in ("cpu_op", "user_annotation") and "External id" in args:
            ops[args["External id"]] = (e["tid"], e["ts"])
    return launches, ops


def _device_events(events, t0: float, t1: float) -> tuple[list, str]:
    """[(kernel name, start, dur, launch (tid, ts) or None)] in the window, and "cuda" or "cpu" (CPU ops' self
    time). A kernel's launch point: its launch call, else the start of the CPU op its External id names."""
    out = []
    launches, ops = _launch_points(events)
    for e in events:
        if e.get("cat") in DEVICE_CATS:
            args = e.get("args", {})
            launch = launches.get(args.get("correlation")) or ops.get(args.get("External id"))
            if t0 <= (launch[1] if launch else e["ts"]) <= t1:
                out.append((e["name"], e["ts"], e["dur"], launch))
    if out:
        return out, "cuda"
    by_tid = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and t0 <= e["ts"] <= t1:
            by_tid[e["tid"]].append(e)
    for tid, ops in by_tid.items():
        out += [(e["name"], s, d, (tid, e["ts"])) for e, s, d in _self_spans(ops)]
    return out, "cpu"


def _self_spans(ops) -> list:
    """(op, start, duration) of the parts of one thread's ops that no op nested inside them covers."""
    out, stack, cursor = [], [], None
    for e in sorted(ops, key=lambda e: (e["ts"], -e["dur"])) + [None]:
        t = float("inf") if e is None else e["ts"]
        while stack and stack[-1]["ts"] + stack[-1]["dur"] <= t:
            top = stack.pop()
            end = top["ts"] + top["dur"]
            if end > cursor:
                out.append((top, cursor, end - cursor))
                cursor = end
        if stack and t > cursor:
            out.append((stack[-1], cursor, t - cursor))
        if e is not None:
            stack.append(e)
            cursor = t
    return out


def _shared_time(spans, t0: float, t1: float) -> list[float]:
    """Each span's time inside [t0, t1], a stretch where k spans overlap giving 1/k of itself to each."""
    edges = sorted([(max(s, t0), 1, i) for i, (s, e) in enumerate(spans) if e > s]
                   + [(min(e, t1), -1, i) for i, (s, e) in enumerate(spans) if e > s])
    out, active, last = [0.0] * len(spans), set(), t0
    for t, kind, i in edges:
        if active and t > last:
            for j in active:
                out[j] += (t - last) / len(active)
        last = max(last, t)
        (active.add if kind == 1 else active.discard)(i)
    return out


class _Context:
    """Phase scopes, per-thread op stacks and autograd's forward -> backward links of one trace."""

    def __init__(self, events):
        self.scopes = Timeline(_spans(events, "user_annotation", PREFIX))
        self.gpu_scopes = Timeline(_spans(events, "gpu_user_annotation", PREFIX))
        by_tid = defaultdict(list)
        for e in events:
            if e.get("cat") == "cpu_op":
                by_tid[e["tid"]].append((e["ts"], e["ts"] + e["dur"], (e["name"], e["ts"])))
        self.threads = {tid: Timeline(ops) for tid, ops in by_tid.items()}
        flows = [e for e in events if e.get("cat") == "fwdbwd"]
        fwd = {e["id"]: e["ts"] for e in flows if e["ph"] == "s"}
        self.forward_of = {(e["tid"], e["ts"]): fwd[e["id"]] for e in flows if e["ph"] == "f" and e["id"] in fwd}

    def scope_at(self, t, gpu: bool = False) -> str | None:
        stack = (self.gpu_scopes if gpu else self.scopes).at(t)
        return stack[-1][0] if stack else None

    def category(self, name: str, start: float, launch) -> tuple[str, str | None]:
        """(category, phase scope) of one device event."""
        if launch is None:  # no launch record: the GPU-side scopes and the kernel's name only
            scope = self.scope_at(start, gpu=True)
            return categorize(scope, (), name), scope
        tid, ts = launch
        stack = self.threads[tid].at(ts) if tid in self.threads else ()
        scope = self.scope_at(ts)
        fwd_ts = next((self.forward_of[(tid, t)] for _, t in reversed(stack) if (tid, t) in self.forward_of), None)
        fwd_scope = None if fwd_ts is None else self.scope_at(fwd_ts)
        return categorize(scope, tuple(n for n, _ in stack), name, fwd_scope), scope


def analyze(trace: dict, top: int = 8) -> dict:
    """Milliseconds per category (CATEGORIES, host gaps included; they add up to the wall time) of the update
    inside the `WINDOW` scope of a chrome trace, with per-phase device time and each category's top kernels."""
    events = [e for e in trace["traceEvents"] if e.get("ph") in ("X", "s", "f")]
    win = [e for e in events if e.get("cat") == "user_annotation" and e["name"] == WINDOW]
    if len(win) != 1:
        raise ValueError(f"analyze: the trace needs exactly one {WINDOW!r} scope, found {len(win)}")
    t0, t1 = win[0]["ts"], win[0]["ts"] + win[0]["dur"]
    device, mode = _device_events(events, t0, t1)
    ctx = _Context(events)
    raw, phases, kernels = defaultdict(float), defaultdict(float), defaultdict(lambda: [0, 0.0])
    launched = 0.0
    shared = _shared_time([(s, s + d) for _, s, d, _ in device], t0, t1)
    for (name, start, _, launch), dur in zip(device, shared):
        cat, scope = ctx.category(name, start, launch)
        raw[cat] += dur
        phases[scope or "(none)"] += dur
        kernels[(cat, name[:100])][0] += 1
        kernels[(cat, name[:100])][1] += dur
        launched += dur if launch is not None else 0.0
    busy = sum(shared)
    ms = {cat: raw.get(cat, 0.0) / 1e3 for cat in CATEGORIES if cat != "host_gaps"}
    ms["host_gaps"] = (t1 - t0 - busy) / 1e3
    tops = {cat: [[n, c, d / 1e3] for (k, n), (c, d) in sorted(kernels.items(), key=lambda kv: -kv[1][1])
                  if k == cat][:top] for cat in CATEGORIES if cat != "host_gaps"}
    scope_wall = defaultdict(float)
    for s, e, (name, _) in _spans(events, "user_annotation", PREFIX):
        if t0 <= s <= t1:
            scope_wall[name] += (e - s) / 1e3
    return {"mode": mode, "wall_ms": (t1 - t0) / 1e3, "busy_ms": busy / 1e3, "categories": ms,
            "overlap": sum(d for _, _, d, _ in device) / busy if busy > 0 else 1.0, "device_events": len(device),
            "launch_attributed": launched / busy if busy > 0 else 1.0,
            "phase_device_ms": {k: v / 1e3 for k, v in sorted(phases.items())},
            "phase_wall_ms": dict(sorted(scope_wall.items())), "top_kernels": tops}


def analyze_file(path: str, top: int = 8) -> dict:
    with open(path) as f:
        return analyze(json.load(f), top)
