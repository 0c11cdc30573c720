"""The engine's host fast paths change no result: the scheduler's inlined decode path (no BlockManager call
inside a block) against the plain rule (blocks_needed + allocate for every running chunk), and LLM.step's
stop checks against the stop rules written out, with a stand-in runner (no model forward)."""

import pytest

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.engine.kv_cache import BlockManager
from onpolicy.engine.scheduler import ScheduledChunk, Scheduler, Sequence
from onpolicy.model.tiny import build_tiny


class PlainScheduler(Scheduler):
    """The running-sequence loop as the plain rule: blocks_needed and allocate for every chunk."""

    def _schedule_running(self, chunks, budget):
        preempted, i = False, 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(len(seq.token_ids) - seq.num_computed, budget)
            need = self.blocks.blocks_needed(seq, n)
            while need > self.blocks.num_free:
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                start = seq.num_computed
                self.blocks.allocate(seq, n, need)
                chunks.append(ScheduledChunk(seq, start, n))
                budget -= n
                i += 1
        return budget, preempted


def _token(seq) -> int:
    """A stand-in sample that depends only on the sequence and its output position."""
    return (seq.request_id * 7919 + seq.index * 104729 + seq.num_output * 31) % 10 + 2


def _state(sched, chunks):
    bm = sched.blocks
    return ([(c.seq.request_id, c.start, c.num_tokens, c.samples) for c in chunks],
            [(s.request_id, list(s.block_table), s.num_registered, list(s.block_keys)) for s in sched.running],
            dict(bm.cached), list(bm.free), [(b.key, b.token_ids, b.ref_count) for b in bm.blocks],
            sched.num_preemptions, bm.num_hits)


def _drive(cls, num_blocks, caching, calls):
    bm = BlockManager(num_blocks, 4, caching)
    real_allocate = bm.allocate

    def counted(*a, **k):
        calls.append(1)
        return real_allocate(*a, **k)

    bm.allocate = counted
    sched = cls(bm, max_num_seqs=6, max_num_batched_tokens=16)
    shared = list(range(40, 49))  # prompts share 2 full blocks, so later ones hit the prefix cache
    for rid in range(9):
        prompt = shared + [rid + 60] * (rid % 4 + 1)
        sched.add(Sequence(rid, 0, prompt, SamplingParams(max_tokens=5 + 3 * (rid % 3)), seed=rid))
    states = []
    while sched.has_unfinished():
        chunks = sched.schedule()
        assert chunks and len(states) < 1000, "scheduler stalled"
        states.append(_state(sched, chunks))
        sched.advance(chunks)
        for c in chunks:
            if c.samples:
                c.seq.token_ids.append(_token(c.seq))
                if c.seq.num_output >= c.seq.params.max_tokens:
                    sched.finish(c.seq, "length")
    return states


@pytest.mark.parametrize("num_blocks,caching", [(64, True), (64, False), (12, True), (12, False)])
def test_scheduler_fast_path_matches_plain_rule(num_blocks, caching):
    fast_calls, plain_calls = [], []
    fast = _drive(Scheduler, num_blocks, caching, fast_calls)
    plain = _drive(PlainScheduler, num_blocks, caching, plain_calls)
    assert fast == plain  # chunks, block tables, keys, cache, free order, preemptions, hits: step by step
    assert len(fast_calls) < len(plain_calls)  # decode steps inside a block skip the BlockManager
    if num_blocks == 12:
        assert fast[-1][5] > 0  # the tight cache did preempt
    if caching:
        assert fast[-1][6] > 0  # and the shared prefix was hit


def _stop_reason(tokens, params, eos):
    """The stop rules written out: eos (unless ignore_eos) or a stop id -> stop; max_tokens -> length."""
    for i, t in enumerate(tokens):
        if (t == eos and not params.ignore_eos) or t in (params.stop_token_ids or []):
            return i + 1, "stop"
        if i + 1 >= params.max_tokens:
            return i + 1, "length"
    raise AssertionError("script too short")


class _Done:
    def __init__(self, out):
        self.out = out

    def result(self):
        return self.out


def use_stand_in(llm, sample) -> None:
    """Replace the runner's forward + sampling (sync `step` and async `launch`) by `sample(seq) -> (token,
    logprob)` for each sampling chunk; a placeholder counts as a token, as in the real runner."""

    def step(chunks):
        pairs = [sample(c.seq) for c in chunks if c.samples]
        return [t for t, _ in pairs], [lp if s.params.logprobs else None
                                       for (_, lp), s in zip(pairs, [c.seq for c in chunks if c.samples])]

    def launch(chunks, seqs):
        assert all(t >= 0 for s in seqs for t in s.token_ids[:-1])  # only the last token may be a placeholder
        pairs = [sample(s) for s in seqs]
        return _Done(([t for t, _ in pairs], [lp for _, lp in pairs]))

    llm.runner.step, llm.runner.launch = step, launch


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_stop_checks_match_the_rules(async_scheduling):
    model, _ = build_tiny(seed=0, num_hidden_layers=1)
    llm = LLM(model.eval(), None, EngineConfig(num_blocks=64, block_size=4, max_num_seqs=8,
                                               async_scheduling=async_scheduling))
    llm.eos_token_id = 2
    use_stand_in(llm, lambda s: (_token(s), -0.5 - s.num_output))
    params = [SamplingParams(n=2, max_tokens=m, ignore_eos=ig, stop_token_ids=ids, logprobs=lp)
              for m in (1, 6, 20) for ig in (False, True) for ids in (None, [5]) for lp in (True, False)]
    outs = llm.generate([[4, 5, 6 + i % 3] for i in range(len(params))], params)
    seen = set()
    for out, p in zip(outs, params):
        for c in out.outputs:
            script = [(out.request_id * 7919 + c.index * 104729 + k * 31) % 10 + 2 for k in range(p.max_tokens)]
            length, reason = _stop_reason(script, p, eos=2)
            assert (c.token_ids, c.finish_reason) == (script[:length], reason)
            assert (c.logprobs is None) == (not p.logprobs)
            if p.logprobs:
                assert c.logprobs.tolist() == [-0.5 - k for k in range(length)]
            seen.add(reason)
    assert seen == {"stop", "length"}
    assert llm.stats["generated_tokens"] == sum(len(c.token_ids) for o in outs for c in o.outputs)


def test_bench_engine_host_counts_steps():
    from scripts import bench_engine_host as bench

    rows = bench.main(["--batches", "1,4", "--new-tokens", "8", "--repeats", "1", "--stage"])
    # one prefill step that samples the first token, then 7 decode steps (staged for the graphs)
    assert [(r["batch"], r["steps"], r["decode_steps"]) for r in rows] == [(1, 8, 7), (4, 8, 7)]
    assert all(r["host_ms_per_step"] > 0 and r["stage_ms_per_decode_step"] > 0 for r in rows)
