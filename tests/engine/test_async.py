"""Async scheduling (EngineConfig.async_scheduling) changes no output: the same tokens, logprobs, texts and
finish reasons as the synchronous engine, bitwise, across batch sizes, eos / stop ids / stop strings /
max_tokens, n > 1, more requests than seats, preemption, prefix-cache hits, and rows that fall back to the
synchronous path (top-k / top-p, mixed temperatures); on the CPU runner and on the CUDA-graph buffers (graphs
replayed eagerly, as tests/engine/test_graphs.py). The graph capture itself is tested on GPU."""
import pytest
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.engine.graphs import DecodeGraphs
from onpolicy.engine.kv_cache import BlockManager, allocate_kv_caches
from onpolicy.engine.scheduler import Scheduler, Sequence
from onpolicy.model.tiny import build_tiny

from test_graphs import _eager_capture


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=3, head_dim=64, num_hidden_layers=1)
    return model.eval(), tok


def _engine(tiny, async_scheduling: bool, graphs: bool, **cfg) -> LLM:
    model, tok = tiny
    llm = LLM(model, tok, EngineConfig(async_scheduling=async_scheduling, **cfg), seed=1)
    if graphs:  # DecodeGraphs on the CPU: the same buffers, the 'graph' replayed eagerly
        r = llm.runner
        r.kv_caches = allocate_kv_caches(model.config, r.num_blocks, r.block_size, r.dtype, r.device,
                                         llm.config.max_num_seqs)
        r.graphs = DecodeGraphs(r)
    return llm


def _outputs(outs):
    return [[(c.index, c.token_ids, c.logprobs, c.text, c.finish_reason) for c in o.outputs] for o in outs]


def _assert_same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for (ia, ta, la, xa, fa), (ib, tb, lb, xb, fb) in zip(ra, rb):
            assert (ia, ta, xa, fa) == (ib, tb, xb, fb)
            assert (la is None and lb is None) or torch.equal(la, lb)


def _workload(tok, k: int):
    """k prompts (some sharing a prefix) with a mix of stop rules; eos is set to a frequent id by the caller."""
    shared = "the shared prefix! "
    prompts = [(shared if i % 3 == 0 else "") + f"q{i}:" + "ab" * (i % 4) for i in range(k)]
    params = []
    for i in range(k):
        kind = i % 6
        params.append(SamplingParams(
            n=2 if kind == 1 else 1, temperature=(0.0 if kind == 2 else 1.0), seed=100 + i,
            max_tokens=3 + (7 * i) % 17, ignore_eos=kind == 3, stop=["e"] if kind == 4 else None,
            stop_token_ids=list(range(20 + i % 7, 90, 9)) if kind in (1, 5) else None))
    return prompts, params


CASES = [  # (prompts, max_num_seqs, num_blocks, max_num_batched_tokens)
    (1, 4, 64, 64),
    (5, 8, 64, 64),
    (16, 6, 64, 32),   # more requests than seats, chunked prefill
    (16, 16, 14, 64),  # a tight cache: preemption
]


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("k,seats,blocks,budget", CASES)
def test_async_equals_sync(tiny, monkeypatch, graphs, k, seats, blocks, budget):
    monkeypatch.setattr(DecodeGraphs, "_capture", _eager_capture)
    prompts, params = _workload(tiny[1], k)
    runs, pending_preempted = {}, []
    plain_preempt = Scheduler._preempt

    def preempt(self, seq):
        pending_preempted.append(seq.pending_row >= 0)
        plain_preempt(self, seq)

    monkeypatch.setattr(Scheduler, "_preempt", preempt)
    for mode in (False, True):
        pending_preempted.clear()
        llm = _engine(tiny, mode, graphs, num_blocks=blocks, block_size=4, max_num_seqs=seats,
                      max_num_batched_tokens=budget)
        llm.eos_token_id = 50
        runs[mode] = (_outputs(llm.generate(prompts, params)), llm)
    _assert_same(runs[False][0], runs[True][0])
    sync, asyn = runs[False][1], runs[True][1]
    assert sync.stats["async_steps"] == 0 and asyn.stats["async_steps"] > 0
    assert sync.stats["generated_tokens"] == asyn.stats["generated_tokens"]
    if k > 1:
        assert {c[4] for r in runs[True][0] for c in r} == {"stop", "length"}
    if blocks == 14:
        assert sync.scheduler.num_preemptions > 0 and any(pending_preempted)  # one was preempted mid-flight
    elif k > 1:
        assert asyn.stats["wasted_rows"] > 0  # some sequence stopped on a token its next step already used
    if graphs:
        assert asyn.runner.graphs.replays > 0


def test_async_mixed_rows_fall_back_and_prefix_hits(tiny):
    """top-k / top-p / mixed-temperature steps run synchronously after the step in flight is read; a second
    generate hits the prefix cache the first one filled; the results equal the synchronous engine's."""
    prompts = ["shared prompt one", "shared prompt two", "other"]
    params = [SamplingParams(temperature=1.0, top_k=5, max_tokens=9, seed=1),
              SamplingParams(temperature=0.7, max_tokens=12, seed=2, ignore_eos=True),
              SamplingParams(temperature=1.0, max_tokens=14, seed=3, ignore_eos=True)]
    outs = {}
    for mode in (False, True):
        llm = _engine(tiny, mode, False, num_blocks=64, block_size=4, max_num_seqs=4)
        first = _outputs(llm.generate(prompts, params))
        plain = _outputs(llm.generate(prompts[1:], params[1:]))  # one temperature: async, prefix hits
        outs[mode] = (first, plain, llm.block_manager.num_hits, llm.stats["async_steps"])
    _assert_same(outs[False][0], outs[True][0])
    _assert_same(outs[False][1], outs[True][1])
    assert outs[True][2] > 0 and outs[True][3] > 0


def test_add_request_and_step_loop(tiny):
    """step() until has_unfinished() is False returns every request once, as the synchronous engine does."""
    res = {}
    for mode in (False, True):
        llm = _engine(tiny, mode, False, num_blocks=64, block_size=4, max_num_seqs=3)
        llm.eos_token_id = 50
        for i in range(5):
            llm.add_request(f"r{i}", SamplingParams(max_tokens=4 + 3 * i, seed=i))
        got = []
        while llm.has_unfinished():
            got.extend(llm.step())
        res[mode] = sorted((o.request_id, o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in got)
    assert res[False] == res[True] and len(res[True]) == 5


def test_placeholder_rules_in_scheduler_and_block_manager():
    """A block whose last token is a placeholder is keyed only once the id is known; a running sequence whose
    placeholder is its last output is not scheduled; one preempted meanwhile finishes from `waiting`."""
    bm = BlockManager(8, 4, True)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    seq = Sequence(0, 0, [5, 6, 7], SamplingParams(max_tokens=2), seed=0)
    sched.add(seq)
    sched.advance(sched.schedule())  # prefill of 3 tokens: no full block
    seq.token_ids.append(-1)  # the first output is in flight
    seq.pending_row = 0
    sched.advance(sched.schedule())  # decode of the placeholder fills block 0: not keyed yet
    assert seq.num_computed == 4 and seq.num_registered == 0 and not bm.cached
    seq.token_ids[-1], seq.pending_row = 9, -1
    seq.token_ids.append(-1)  # the second output (its max_tokens-th) is in flight
    seq.pending_row = 0
    assert sched.schedule() == []  # nothing to compute for it
    assert seq.num_registered == 0  # keyed by the next allocate (none here); the key needs the real id
    bm.allocate(seq, 0)
    assert seq.num_registered == 1 and bm.blocks[seq.block_table[0]].token_ids == (5, 6, 7, 9)
    sched._preempt(sched.running.pop())
    sched.finish(seq, "length")  # its in-flight token ended it while it waited
    assert not sched.has_unfinished() and seq.finish_reason == "length"
