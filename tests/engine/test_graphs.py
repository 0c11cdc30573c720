"""DecodeGraphs' buffer handling, exercised on CPU: the 'graph' is replaced by an eager call on the same
static buffers, so bucket padding, scratch-slot writes and stale block-table columns are tested here; the
real capture is tested on GPU (tests/invariance/test_engine_gpu_parity.py)."""
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.engine.graphs import DecodeGraphs, bucket_sizes
from onpolicy.engine.kv_cache import allocate_kv_caches
from onpolicy.model.tiny import build_tiny


class _EagerGraph:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def _eager_capture(self, bs, temperature):
    self._fill_pad(0)
    self._upload(bs)
    out = self._step(bs, temperature).clone()

    def run():
        out.copy_(self._step(bs, temperature))

    return _EagerGraph(run), out


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]


def _plain_and_graphed(model, tok, prompts, params, max_num_seqs):
    """(plain outputs, outputs with DecodeGraphs on the CPU (captures run eagerly), that runner)."""
    cfg = EngineConfig(num_blocks=64, block_size=4, max_num_seqs=max_num_seqs)
    plain = LLM(model, tok, cfg).generate(prompts, params)
    llm = LLM(model, tok, cfg)
    r = llm.runner
    r.kv_caches = allocate_kv_caches(model.config, r.num_blocks, r.block_size, r.dtype, r.device, cfg.max_num_seqs)
    r.graphs = DecodeGraphs(r)
    return plain, llm.generate(prompts, params), r


def test_padded_decode_buffers_match_eager(monkeypatch):
    model, tok = build_tiny(seed=4, head_dim=64, num_hidden_layers=1)
    monkeypatch.setattr(DecodeGraphs, "_capture", _eager_capture)
    prompts = [[5 + i] * (3 + 5 * i) for i in range(5)]
    params = [SamplingParams(temperature=1.0, max_tokens=2 + 2 * i, seed=i, ignore_eos=True) for i in range(5)]
    plain, padded, r = _plain_and_graphed(model, tok, prompts, params, max_num_seqs=12)
    assert r.graphs.replays > 5 and len(r.graphs.graphs) >= 2  # several buckets, pad rows in use
    for a, b in zip(plain, padded):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert torch.equal(a.outputs[0].logprobs, b.outputs[0].logprobs)
    # pad rows wrote only to the scratch slots past the paged blocks
    assert bool(r.kv_caches[0][0][r.scratch_slot_base:].abs().sum() > 0)


def test_graphs_per_kernel_mode(monkeypatch):
    """The engine reads `kernels.is_invariant()` per step; each mode replays graphs of its own (trainer.invariant:
    false gets a graph-captured engine too), keyed by (bucket, temperature, mode)."""
    from onpolicy import kernels

    model, tok = build_tiny(seed=4, head_dim=64, num_hidden_layers=1)
    monkeypatch.setattr(DecodeGraphs, "_capture", _eager_capture)
    cfg = EngineConfig(num_blocks=64, block_size=4, max_num_seqs=4)
    llm = LLM(model, tok, cfg)
    r = llm.runner
    r.kv_caches = allocate_kv_caches(model.config, r.num_blocks, r.block_size, r.dtype, r.device, cfg.max_num_seqs)
    r.graphs = DecodeGraphs(r)
    params = SamplingParams(temperature=1.0, max_tokens=4, seed=0, ignore_eos=True)
    with kernels.invariant_mode(False):
        llm.generate([[5, 6, 7]], params)
    assert r.graphs.replays > 0 and set(r.graphs.graphs) == {(1, 1.0, False)}
    llm.generate([[5, 6, 7]], params)
    assert set(r.graphs.graphs) == {(1, 1.0, False), (1, 1.0, True)}


def test_filtered_and_mixed_temperature_rows_use_the_forward_graph(monkeypatch):
    """top-k / top-p rows, or rows of two temperatures, replay the forward-only graph and sample eagerly: the
    same tokens and logprobs as no graphs at all."""
    model, tok = build_tiny(seed=5, head_dim=64, num_hidden_layers=1)
    monkeypatch.setattr(DecodeGraphs, "_capture", _eager_capture)
    prompts = [[7 + i] * (2 + 3 * i) for i in range(4)]
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, max_tokens=5, seed=i, ignore_eos=True)
              for i, (t, k, p) in enumerate([(1.0, 5, 1.0), (0.7, -1, 1.0), (1.0, -1, 0.9), (0.0, -1, 1.0)])]
    plain, graphed, r = _plain_and_graphed(model, tok, prompts, params, max_num_seqs=8)
    assert r.graphs.replays > 0 and all(key[1] is None for key in r.graphs.graphs)
    for a, b in zip(plain, graphed):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert torch.equal(a.outputs[0].logprobs, b.outputs[0].logprobs)


def test_capture_runs_with_gc_paused(monkeypatch):
    """A dead cycle freed by the cyclic GC mid-capture (an old engine's graphs, pinned buffers) invalidates a
    CUDA graph capture: captures run after one collection with the GC off, and it is back on afterwards."""
    import gc

    seen = []

    def capture(self, bs, temperature):
        seen.append(gc.isenabled())
        return _eager_capture(self, bs, temperature)

    model, tok = build_tiny(seed=4, head_dim=64, num_hidden_layers=1)
    monkeypatch.setattr(DecodeGraphs, "_capture", capture)
    params = SamplingParams(temperature=1.0, max_tokens=3, seed=0, ignore_eos=True)
    _plain_and_graphed(model, tok, [[5, 6, 7]], params, max_num_seqs=4)
    assert seen and not any(seen) and gc.isenabled()


def test_replay_returns_its_tokens_and_writes_nothing_of_the_runner(monkeypatch):
    """A replay leaves the runner's `last_tokens` alone and returns what it produced; the runner stores those
    tokens there, where the next asynchronously launched step reads its input ids."""
    model, tok = build_tiny(seed=4, head_dim=64, num_hidden_layers=1)
    monkeypatch.setattr(DecodeGraphs, "_capture", _eager_capture)
    llm = LLM(model, tok, EngineConfig(num_blocks=64, block_size=4, max_num_seqs=4, async_scheduling=True))
    r = llm.runner
    r.kv_caches = allocate_kv_caches(model.config, r.num_blocks, r.block_size, r.dtype, r.device, 4)
    r.graphs = DecodeGraphs(r)
    seen, plain_launch, plain_runner_launch = [], r.graphs.launch, r.launch

    def launch(seqs, temperature):
        before = r.last_tokens.clone()
        out = plain_launch(seqs, temperature)
        assert torch.equal(r.last_tokens, before)
        seen.append(out[0].long().clone())
        return out

    def runner_launch(chunks, seqs):
        inflight = plain_runner_launch(chunks, seqs)
        assert torch.equal(r.last_tokens[: len(seqs)], seen[-1])
        return inflight

    monkeypatch.setattr(r.graphs, "launch", launch)
    monkeypatch.setattr(r, "launch", runner_launch)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=0, ignore_eos=True)
    outs = llm.generate([[5, 6, 7], [8, 9]], params)
    assert len(seen) > 2 and llm.stats["async_steps"] == len(seen)
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
