"""Every supported checkpoint family (one row each in arch_cases.REAL), built by transformers from the real
model's config values: loads from its config.json as transformers writes it and as published; fp32 logprobs
match transformers' eager forward at positions past 300 (where rope scaling changes the frequencies); bf16
sampler logprobs are torch.equal to the trainer's under ragged batches, chunked prefill and prefix-cache hits;
saving gives a checkpoint transformers reloads to the same class and bitwise the same logits."""
import json

import pytest
import torch

from arch_cases import REAL, random_model, skip_reason
from model_test_utils import packed
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import CausalLM, ModelConfig, load_pretrained, save_pretrained, sequence_logprobs
from onpolicy.model.tiny import CharTokenizer

NAMES = list(REAL)
LONG = 320  # positions past 300: llama3 / yarn / linear scaling change the frequencies there
SCALED = [n for n in NAMES if REAL[n].get("rope_scaling")]


def _seqs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in (LONG, 37, 5)]


@pytest.fixture(scope="module", params=NAMES)
def checkpoint(request, tmp_path_factory):
    """(name, transformers model, directory it saved to)."""
    name = request.param
    if skip_reason(name):
        pytest.skip(skip_reason(name))
    hf = random_model(name, seed=NAMES.index(name))
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    return name, hf, path


def our_logprobs(model, seqs):
    ids, pos, meta = packed(seqs)
    targets = torch.cat([torch.tensor(s[1:] + [0]) for s in seqs])
    with torch.no_grad():
        lp = model.token_logprobs(model(ids, pos, meta), targets)
    keep = torch.cat([torch.arange(len(s)) < len(s) - 1 for s in seqs])
    return lp[keep]


def hf_logprobs(hf, seqs):
    out = []
    with torch.no_grad():
        for s in seqs:
            lp = torch.log_softmax(hf(torch.tensor([s])).logits[0].float(), -1)
            out.append(lp[:-1].gather(1, torch.tensor(s[1:])[:, None])[:, 0])
    return torch.cat(out)


def test_fp32_logprobs_match_transformers(checkpoint):
    name, hf, path = checkpoint
    model, config = load_pretrained(str(path))
    assert config.architecture == REAL[name]["model_type"]
    seqs = _seqs()
    ref = hf_logprobs(hf, seqs)
    diff = (our_logprobs(model, seqs) - ref).abs().max().item()
    print(f"{name}: max |fp32 logprob diff| vs transformers = {diff:.3g}")
    assert diff < 1e-5
    if name in SCALED:  # the scaling shows: the same weights with default RoPE are far off past position 300
        plain = CausalLM(config.replace(rope_scaling=None), init=False)
        plain.load_state_dict(model.state_dict())
        assert (our_logprobs(plain, seqs) - ref).abs().max().item() > 1e-3
    if config.sliding_window is not None:  # the window shows: the same weights attending to every key are off
        full = CausalLM(config.replace(sliding_window=None, layer_types=None), init=False)
        full.load_state_dict(model.state_dict())
        assert (our_logprobs(full, seqs) - ref).abs().max().item() > 1e-3


def _published(name, hf_json: dict) -> dict:
    """config.json as the hub publishes it: rope_theta + rope_scaling (legacy keys), no rope_parameters."""
    out = {k: v for k, v in hf_json.items() if k not in ("rope_parameters", "layer_types")}
    rope = hf_json["rope_parameters"]
    if "full_attention" in rope:  # Gemma-3: rope_local_base_freq, and the layer kinds as a pattern
        out["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        out["sliding_window_pattern"] = hf_json["layer_types"].index("full_attention") + 1
        rope = rope["full_attention"]
    out["rope_theta"] = rope["rope_theta"]
    scaling = REAL[name].get("rope_scaling")
    out["rope_scaling"] = None if scaling is None else dict(
        scaling, **{k: rope[k] for k in ("original_max_position_embeddings",) if k in scaling})
    if "original_max_position_embeddings" in REAL[name]:  # Phi-3 publishes it at the top level
        out["original_max_position_embeddings"] = hf_json.get("original_max_position_embeddings") or rope[
            "original_max_position_embeddings"]
    return out


def test_published_and_transformers_configs_agree(checkpoint):
    name, _, path = checkpoint
    written = json.loads((path / "config.json").read_text())
    assert ModelConfig.from_hf(_published(name, written)) == ModelConfig.from_hf(written)


def test_save_then_transformers_reloads_identical_logits(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    name, hf, path = checkpoint
    ours, config = load_pretrained(str(path))
    save_pretrained(ours, str(tmp_path))
    # pad_token_id: SmolLM3's class default (128004) lies outside the tiny vocab; real checkpoints' vocab holds it
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", pad_token_id=None)
    again = again.float().eval()
    assert type(again) is type(hf)
    seq = torch.tensor([_seqs()[0]])
    with torch.no_grad():
        assert torch.equal(again(seq).logits, hf(seq).logits)
    reloaded, config2 = load_pretrained(str(tmp_path))
    assert config2 == config
    for (n, a), (_, b) in zip(ours.named_parameters(), reloaded.named_parameters()):
        assert torch.equal(a, b), n


def _prompts(n, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 80, (int(k),), generator=g).tolist() for k in torch.randint(lo, hi + 1, (n,), generator=g)]


def test_bf16_sampler_equals_trainer(checkpoint):
    """Ragged prompts (one past position 300) in a 48-token chunked-prefill budget, n=2 samples sharing prompt
    blocks, then a second call that hits the prefix cache: every engine logprob equals the trainer's bitwise."""
    _, _, path = checkpoint
    model, _ = load_pretrained(str(path), dtype="bfloat16")
    model.eval()
    llm = LLM(model, CharTokenizer(), EngineConfig(num_blocks=256, block_size=8, max_num_batched_tokens=48,
                                                   max_num_seqs=8))
    long = _prompts(1, 300, 300, seed=1)
    prompts = long + _prompts(5, 1, 40, seed=2)
    params = [SamplingParams(n=2, temperature=t, max_tokens=3 + i % 4, seed=i)
              for i, t in enumerate([1.0, 0.7, 1.0, 1.0, 0.7, 1.0])]
    outs = llm.generate(prompts, params)
    outs += llm.generate([long[0] + [5, 6, 7]], SamplingParams(n=1, temperature=1.0, max_tokens=4, seed=99))
    groups = {}  # temperature -> (prompts, completions, engine logprobs): one packed trainer batch each
    for out, t in zip(outs, [p.temperature for p in params] + [1.0]):
        for c in out.outputs:
            for part, item in zip(groups.setdefault(t, ([], [], [])), (out.prompt_token_ids, c.token_ids, c.logprobs)):
                part.append(item)
    assert sum(len(g[0]) for g in groups.values()) == 13
    for t, (prompts_, completions, engine) in groups.items():
        with torch.no_grad():
            trainer = sequence_logprobs(model, prompts_, completions, t)
        for a, b in zip(engine, trainer):
            assert torch.equal(a, b), float((a - b).abs().max())


@pytest.mark.parametrize("name,change,match", [
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window True is sliding-window attention"),
    ("llama3", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic.*batch"),
    ("llama3", {"mlp_bias": True}, "mlp_bias"),
    ("gemma3", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ("qwen2", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
])
def test_published_configs_the_kernels_cannot_compute_are_refused(name, change, match):
    hf = dict(REAL[name], num_hidden_layers=2, vocab_size=128, max_position_embeddings=32768)
    for key, value in change.items():
        if value == "absent":
            del hf[key]
        else:
            hf[key] = value
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(hf)


@pytest.mark.parametrize("name,window,want", [("mistral", None, None), ("mistral", "absent", 4096),
                                              ("mistral", 4096, 4096), ("phi3", 2047, 2047), ("phi3", 1 << 20, None)])
def test_uniform_sliding_window(name, window, want):
    """Mistral / Phi-3: config.json's sliding_window (MistralConfig's default 4096 when absent) on every layer;
    a window covering the context is full attention."""
    hf = dict(REAL[name], num_hidden_layers=2, vocab_size=128, max_position_embeddings=32768)
    if window == "absent":
        del hf["sliding_window"]
    else:
        hf["sliding_window"] = window
    c = ModelConfig.from_hf(hf)
    assert [c.layer_window(i) for i in range(2)] == [want, want]
    assert ModelConfig.from_hf(c.to_hf()) == c


def test_longrope_loads_at_its_short_factor_context():
    """Phi-4-mini as published (131,072 positions, longrope from 4,096): exact only below 4,096, so the context
    is capped there and HF's attention factor for the published length is kept explicitly."""
    import math

    hf = dict(REAL["phi4-mini"], num_hidden_layers=2, vocab_size=128, max_position_embeddings=131072)
    c = ModelConfig.from_hf(hf)
    assert c.max_position_embeddings == 4096 and c.partial_rotary_factor == 0.75
    assert c.rope_scaling["attention_factor"] == math.sqrt(1 + math.log(32) / math.log(4096))
    assert ModelConfig.from_hf(c.to_hf()) == c
