"""Block manager: ref counts, prefix-cache hits keyed by the whole prefix, eviction, reset."""
from onpolicy.engine.kv_cache import BlockManager
from onpolicy.engine.params import SamplingParams
from onpolicy.engine.scheduler import Sequence


def _seq(tokens, rid=0):
    return Sequence(rid, 0, tokens, SamplingParams(), seed=0)


def _run_prefill(bm, seq):
    hits = bm.match_prefix(seq)
    n = seq.num_tokens - len(hits) * bm.block_size
    assert bm.can_admit(seq, hits, n)
    bm.admit(seq, hits)
    bm.allocate(seq, n)
    seq.num_computed = seq.num_tokens
    return hits


def test_allocate_and_release_ref_counts():
    bm = BlockManager(8, 4)
    a = _seq(list(range(10)))
    assert _run_prefill(bm, a) == []
    assert len(a.block_table) == 3 and bm.num_free == 5
    assert a.num_registered == 2  # two full blocks keyed, the partial third is not
    bm.release(a)
    assert bm.num_free == 8 and all(b.ref_count == 0 for b in bm.blocks)


def test_prefix_hit_shares_blocks_and_keeps_last_token_uncached():
    bm = BlockManager(16, 4)
    a, b = _seq(list(range(12))), _seq(list(range(12)) + [99])
    _run_prefill(bm, a)
    # a's 3 full blocks are keyed; an identical prompt may reuse only 2 (its last token must be computed)
    same = _seq(list(range(12)))
    assert bm.match_prefix(same) == a.block_table[:2]
    hits = _run_prefill(bm, b)
    assert hits == a.block_table[:3]
    assert b.num_computed == 13 and b.block_table[:3] == a.block_table[:3]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 2]
    bm.release(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:3]] == [1, 1, 1]
    assert bm.num_hits == 12


def test_key_covers_whole_prefix():
    bm = BlockManager(16, 4)
    a = _seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    _run_prefill(bm, a)
    # same second block, different first block -> no hit at all
    other = _seq([0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert bm.match_prefix(other) == []


def test_freed_blocks_stay_cached_until_reused_then_evicted():
    bm = BlockManager(4, 4)
    a = _seq(list(range(9)))
    _run_prefill(bm, a)
    table = list(a.block_table)
    bm.release(a)
    assert bm.match_prefix(_seq(list(range(9)))) == table[:2]
    # fill the cache with something else: the old blocks are reused and their keys dropped
    c = _seq(list(range(100, 116)))
    _run_prefill(bm, c)
    assert bm.match_prefix(_seq(list(range(9)))) == []


def test_reviving_a_free_cached_block_counts_against_capacity():
    bm = BlockManager(3, 4)
    a = _seq(list(range(9)))
    _run_prefill(bm, a)  # 3 blocks
    bm.release(a)
    b = _seq(list(range(8)) + [50, 51, 52, 53, 54])  # hits 2 free cached blocks, needs 2 more -> 4 > 3
    hits = bm.match_prefix(b)
    assert len(hits) == 2
    assert not bm.can_admit(b, hits, b.num_tokens - 8)
    assert bm.can_admit(b, hits, 4)  # a chunk of 4 tokens needs one new block


def test_disabled_prefix_cache_and_reset():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    a = _seq(list(range(9)))
    _run_prefill(bm, a)
    assert bm.match_prefix(_seq(list(range(9)))) == [] and not bm.cached
    bm2 = BlockManager(8, 4)
    _run_prefill(bm2, _seq(list(range(9))))
    assert bm2.match_prefix(_seq(list(range(9))))
    bm2.reset_prefix_cache()
    assert bm2.match_prefix(_seq(list(range(9)))) == []
