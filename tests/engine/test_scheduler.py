"""Scheduler without a model: token budget, max_num_seqs, chunked prefill, decode-first order, preemption
by recompute, and block bookkeeping after every step (a simulated forward appends one token per sample)."""
from onpolicy.engine.kv_cache import BlockManager
from onpolicy.engine.params import SamplingParams
from onpolicy.engine.scheduler import RUNNING, Scheduler, Sequence


def _check_blocks(sched):
    bm = sched.blocks
    refs = [0] * len(bm.blocks)
    for s in sched.running:
        assert s.status == RUNNING
        assert len(s.block_table) * bm.block_size >= s.num_computed
        for b in s.block_table:
            refs[b] += 1
    for s in sched.waiting:
        assert not s.block_table and s.num_computed == 0
    assert refs == [b.ref_count for b in bm.blocks]
    assert set(bm.free) == {i for i, r in enumerate(refs) if r == 0}


def _drive(sched, max_tokens, max_steps=500):
    """Simulate steps; returns the list of step chunk lists. Each sequence stops after max_tokens outputs."""
    history = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return history
        chunks = sched.schedule()
        assert chunks, "scheduler stalled"
        assert sum(c.num_tokens for c in chunks) <= sched.max_num_batched_tokens
        assert len(sched.running) <= sched.max_num_seqs
        history.append([(c.seq, c.start, c.num_tokens, c.samples) for c in chunks])
        sched.advance(chunks)
        for c in chunks:
            if c.samples:
                c.seq.token_ids.append(7)
                if c.seq.num_output >= max_tokens:
                    sched.finish(c.seq, "length")
        _check_blocks(sched)
    raise AssertionError("did not finish")


def _seqs(lengths):
    return [Sequence(i, 0, list(range(100 * i, 100 * i + n)), SamplingParams(), seed=i) for i, n in enumerate(lengths)]


def test_chunked_prefill_then_decode_first():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a, b = _seqs([25, 3])
    sched.add(a)
    hist = _drive_steps(sched, 1)
    assert [(s is a, st, n, smp) for s, st, n, smp in hist[0]] == [(True, 0, 10, False)]
    sched.add(b)
    hist = _drive_steps(sched, 2)
    # a continues its prefill (10, then the last 5 and samples); b fills the rest of the budget
    assert [(st, n, smp) for _, st, n, smp in hist[0]] == [(10, 10, False)]
    assert [(st, n, smp) for _, st, n, smp in hist[1]] == [(20, 5, True), (0, 3, True)]
    hist = _drive_steps(sched, 1)
    assert [(s is a, n) for s, _, n, _ in hist[0]] == [(True, 1), (False, 1)]  # decodes, in arrival order


def _drive_steps(sched, k):
    out = []
    for _ in range(k):
        chunks = sched.schedule()
        out.append([(c.seq, c.start, c.num_tokens, c.samples) for c in chunks])
        sched.advance(chunks)
        for c in chunks:
            if c.samples:
                c.seq.token_ids.append(7)
        _check_blocks(sched)
    return out


def test_max_num_seqs_and_budget():
    sched = Scheduler(BlockManager(256, 4), max_num_seqs=3, max_num_batched_tokens=16)
    for s in _seqs([5, 6, 7, 8, 9]):
        sched.add(s)
    hist = _drive(sched, max_tokens=4)
    assert max(len(step) for step in hist) <= 3
    assert sched.blocks.num_free == 256


def test_preemption_recomputes_and_everyone_finishes():
    # 6 blocks of 4 slots = 24 slots; four sequences of 6 + 10 tokens cannot all fit at once
    sched = Scheduler(BlockManager(6, 4, enable_prefix_caching=False), max_num_seqs=4, max_num_batched_tokens=64)
    seqs = _seqs([6, 6, 6, 6])
    for s in seqs:
        sched.add(s)
    hist = _drive(sched, max_tokens=10)
    assert sched.num_preemptions > 0
    assert all(s.num_output == 10 for s in seqs)
    # a preempted sequence restarts from position 0 with its generated tokens as prompt
    victim = next(s for s in seqs if s.num_preemptions)
    restarts = [(st, n) for step in hist for (s, st, n, _) in step if s is victim and st == 0]
    assert len(restarts) == 1 + victim.num_preemptions and restarts[-1][1] > victim.num_prompt_tokens
    assert sched.blocks.num_free == 6


def test_shared_prompt_blocks_hit_within_one_step():
    sched = Scheduler(BlockManager(32, 4), max_num_seqs=8, max_num_batched_tokens=64)
    prompt = list(range(13))
    seqs = [Sequence(0, j, prompt, SamplingParams(n=3), seed=0) for j in range(3)]
    for s in seqs:
        sched.add(s)
    hist = _drive_steps(sched, 1)
    # the first sample computes 13 tokens; the other two hit its 3 full blocks and compute 1 token each
    assert [(st, n) for _, st, n, _ in hist[0]] == [(0, 13), (12, 1), (12, 1)]
    assert seqs[1].block_table[:3] == seqs[0].block_table[:3] == seqs[2].block_table[:3]


def test_random_workloads_keep_block_bookkeeping():
    """Fuzz: random prompt lengths (with shared prefixes), budgets, block sizes and cache sizes; every step
    respects the limits, the block ref counts match the running tables, and every sequence finishes."""
    import random

    rng = random.Random(0)
    for trial in range(100):
        bs = rng.choice([1, 2, 4, 8])
        max_tokens = rng.randint(1, 6)
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 10))]
        need = max(-(-(n + max_tokens) // bs) for n in lengths)
        bm = BlockManager(need + rng.randint(0, 12), bs, enable_prefix_caching=rng.random() < 0.7)
        sched = Scheduler(bm, max_num_seqs=rng.randint(1, 6), max_num_batched_tokens=rng.randint(1, 24))
        base = [rng.randint(0, 3) for _ in range(20)]
        seqs = [Sequence(i, 0, (base if rng.random() < 0.5 else [9] * 20)[:n], SamplingParams(), seed=0)
                for i, n in enumerate(lengths)]
        for s in seqs:
            sched.add(s)
        _drive(sched, max_tokens=max_tokens, max_steps=2000)
        assert all(s.num_output == max_tokens for s in seqs), trial
        assert bm.num_free == len(bm.blocks)
