"""GPU (H100) checks of onpolicy.model: Qwen3-0.6B shape constructible, training == engine bitwise in bf16
and fp32 on the Triton kernels, sampler/trainer logprob parity, HF parity on CUDA."""
import pytest
import torch

from model_test_utils import packed, random_hf_model, run_engine
from onpolicy.model import CausalLM, init_weights, load_pretrained, sequence_logprobs
from onpolicy.model.tiny import build_tiny, qwen3_0_6b_config

pytestmark = pytest.mark.gpu
PROMPTS = [[(13 * i + 5) % 1000 + 3 for i in range(70)], [7, 8, 9], [(3 * i) % 500 + 3 for i in range(17)]]
COMPLETIONS = [[(11 * i) % 900 + 3 for i in range(20)], [(17 * i) % 800 + 3 for i in range(40)], [4, 5]]


def _decode_steps(plen, seqs):
    steps = [([0] * len(seqs), list(plen))]
    for t in range(max(len(s) for s in seqs) - min(plen)):
        starts = [min(p + t, len(s)) for p, s in zip(plen, seqs)]
        steps.append((starts, [min(a + 1, len(s)) for a, s in zip(starts, seqs)]))
    return steps


def test_qwen3_0_6b_constructible_and_runs():
    cfg = qwen3_0_6b_config()
    model = init_weights(CausalLM(cfg, init=False).to("cuda"), seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert 590e6 < n < 610e6 and model.lm_head_weight.dtype == torch.bfloat16
    ids, pos, meta = packed([[1, 2, 3, 4], [5, 6]], "cuda")
    with torch.no_grad():
        h = model(ids, pos, meta)
    assert h.shape == (6, 1024) and torch.isfinite(h.float()).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_training_engine_and_logprob_parity_bitwise(dtype):
    cfg = qwen3_0_6b_config(num_hidden_layers=2, vocab_size=1024, dtype=dtype)
    model = init_weights(CausalLM(cfg, init=False), seed=1).to("cuda")
    seqs = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    plen = [len(p) for p in PROMPTS]
    ids, pos, meta = packed(seqs, "cuda")
    with torch.no_grad():
        want = model(ids, pos, meta)
        want_lp = sequence_logprobs(model, PROMPTS, COMPLETIONS)
    tables = [[9, 2, 5, 7, 0, 11], [3, 8, 1, 6], [4, 10]]
    got = run_engine(model, seqs, _decode_steps(plen, seqs), tables, block_size=16, num_slots=12 * 16)
    assert torch.equal(got, want), (got.float() - want.float()).abs().max().item()
    off = 0
    for b, s in enumerate(seqs):
        rows = got[off + plen[b] - 1 : off + len(s) - 1]
        with torch.inference_mode():
            lp = model.token_logprobs(rows, torch.tensor(COMPLETIONS[b], device="cuda"), 1.0)
        assert torch.equal(lp, want_lp[b]), b
        off += len(s)


def test_tiny_grad_on_cuda():
    model = build_tiny(seed=0, num_hidden_layers=2)[0].to("cuda")
    out = sequence_logprobs(model, [[1, 5, 6]], [[7, 8, 2]])
    out[0].sum().backward()
    assert torch.isfinite(model.model.embed_tokens.weight.grad).all()


def test_hf_parity_on_cuda(tmp_path):
    hf = random_hf_model("qwen3", True)
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(str(tmp_path), device="cuda")
    seqs = [[5, 17, 299, 3, 42, 8, 1], [250, 7, 9, 9, 120]]
    ids, pos, meta = packed(seqs, "cuda")
    with torch.no_grad():
        ours = model.logits(model(ids, pos, meta)).cpu()
        ref = torch.cat([hf(torch.tensor([s])).logits[0] for s in seqs])
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
