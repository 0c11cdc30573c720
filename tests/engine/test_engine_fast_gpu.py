"""GPU (H100) proofs for the engine's fast decode step: the fused sampling kernel draws `sample_tokens`' tokens,
the logprob from the step's one LM-head pass equals the trainer's `token_logprobs`, the Triton KV write equals
index_copy_, and the `invariant=False` engine replays CUDA graphs of its own."""
import pytest
import torch

from onpolicy import kernels
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.engine.sampling import sample, sample_tokens
from onpolicy.kernels import sample_plain
from onpolicy.model import CausalLM, ModelConfig

pytestmark = pytest.mark.gpu
VOCAB = 151936


def _logits(m, seed, scale=4.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, VOCAB, device="cuda", generator=g) * scale
    x[::5, 1000:1010] = x[::5].max(dim=1, keepdim=True).values + 1.0  # ties at the max: lowest id wins
    return x.bfloat16().float()  # bf16-valued logits, as the LM head makes them


def _args(m):
    idx = torch.arange(m, device="cuda")
    return dict(greedy=idx % 7 == 0, seeds=idx * 1_000_003 - 2**61, sample_index=idx % 4, positions=idx % 513)


@pytest.mark.parametrize("m", [1, 3, 64, 300])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gpu_sample_plain_equals_sample_tokens(m, temperature):
    logits = _logits(m, seed=m) / temperature
    args = _args(m)
    none_k, none_p = torch.full((m,), -1, device="cuda"), torch.ones(m, device="cuda", dtype=torch.float64)
    ref = sample_tokens(logits, args["greedy"], none_k, none_p, args["seeds"], args["sample_index"], args["positions"])
    got = sample_plain(logits, **args)
    assert torch.equal(got, ref)
    assert torch.equal(got[::5][args["greedy"][::5]] , torch.full_like(got[::5][args["greedy"][::5]], 1000))


def test_gpu_sample_with_filtered_rows_equals_sample_tokens():
    m = 200
    logits = _logits(m, seed=3)
    args = _args(m)
    idx = torch.arange(m, device="cuda")
    top_k = torch.where(idx % 3 == 1, 50, -1)
    top_p = torch.where(idx % 4 == 2, 0.9, 1.0).double()
    filtered = [i for i in range(m) if not bool(args["greedy"][i]) and (i % 3 == 1 or i % 4 == 2)]
    ref = sample_tokens(logits, top_k=top_k, top_p=top_p, **args)
    assert torch.equal(sample(logits, top_k=top_k, top_p=top_p, filtered=filtered, **args), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gpu_logprob_from_step_logits_equals_token_logprobs(dtype, temperature):
    """The engine's one LM-head pass: logits_token_logprobs(lm_logits(h)) == token_logprobs(h), bitwise, at
    decode and training sizes (600 rows: token_logprobs splits the vocab into several GEMMs, lm_logits not)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    w = (torch.randn(VOCAB, 1024, device="cuda", generator=g) * 0.05).to(dtype)
    for m in (1, 7, 64, 256, 600):
        h = torch.randn(m, 1024, device="cuda", generator=g).to(dtype)
        t = torch.randint(0, VOCAB, (m,), device="cuda", generator=g)
        ref = kernels.token_logprobs(h, w, t, temperature)
        got = kernels.logits_token_logprobs(kernels.lm_logits(h, w, temperature), t, temperature, dtype)
        assert torch.equal(got, ref), m


def test_gpu_write_kv_cache_equals_index_copy():
    g = torch.Generator(device="cuda").manual_seed(2)
    for dtype in (torch.bfloat16, torch.float32):
        k, v = (torch.randn(37, 8, 128, device="cuda", generator=g).to(dtype) for _ in range(2))
        slots = torch.randperm(500, device="cuda", generator=g)[:37]
        caches = [torch.randn(500, 8, 128, device="cuda", generator=g).to(dtype) for _ in range(2)]
        ref = [c.clone() for c in caches]
        ref[0].index_copy_(0, slots, k)
        ref[1].index_copy_(0, slots, v)
        kernels.write_kv_cache(caches[0], caches[1], slots, k, v)
        assert torch.equal(caches[0], ref[0]) and torch.equal(caches[1], ref[1])


def test_gpu_default_mode_engine_replays_graphs():
    """invariant=False: cuBLAS + torch default ops, captured in CUDA graphs of their own (no host sync in the
    step), whole-step graphs for one shared temperature."""
    cfg = ModelConfig(architecture="qwen3", vocab_size=32000, hidden_size=512, intermediate_size=1536,
                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                      max_position_embeddings=512, tie_word_embeddings=False, dtype="bfloat16")
    model = CausalLM(cfg).cuda().eval()
    llm = LLM(model, None, EngineConfig(num_blocks=256, max_num_seqs=8))
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=0, ignore_eos=True, logprobs=True)
    with kernels.invariant_mode(False):
        outs = llm.generate([[5, 6, 7]] * 5, params)
    graphs = llm.runner.graphs
    assert not graphs.disabled and graphs.replays > 0 and all(not key[2] for key in graphs.graphs)
    for o in outs:
        assert len(o.outputs[0].token_ids) == 12 and bool(torch.isfinite(o.outputs[0].logprobs).all())
        assert bool((o.outputs[0].logprobs <= 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_gqa_packed_attention_equals_unpacked(dtype):
    """The engine's GQA-packed tiles (one program per kv head reads K/V once for its q heads) give every row the
    bits of the training kernel's tiles: decode (1 query), chunked prefill and ragged mixes, paged K/V."""
    from onpolicy.kernels.attention_triton import attention_forward_triton

    g = torch.Generator(device="cuda").manual_seed(4)
    bs, hq, hkv, d = 16, 16, 8, 128
    lens_k = [1, 17, 300, 64, 1000, 33]
    lens_q = [1, 17, 1, 20, 1, 5]
    blocks = [-(-n // bs) for n in lens_k]
    perm = torch.randperm(sum(blocks), device="cuda", generator=g).int()
    width = max(blocks)
    table = torch.zeros(len(lens_k), width, dtype=torch.int32, device="cuda")
    start = 0
    for i, n in enumerate(blocks):
        table[i, :n] = perm[start : start + n]
        start += n
    k, v = (torch.randn(sum(blocks) * bs, hkv, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    cu = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens_q), hq, d, device="cuda", generator=g).to(dtype)
    args = (q, k, v, cu, torch.tensor(lens_k, dtype=torch.int32, device="cuda"), table,
            torch.zeros(len(lens_k), dtype=torch.int32, device="cuda"), bs, 0.088)
    plain, lse = attention_forward_triton(*args, True)
    packed, lse_packed = attention_forward_triton(*args, True, pack=True)
    assert torch.equal(plain, packed) and torch.equal(lse, lse_packed)
