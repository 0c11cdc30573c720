"""Stopping: every eos id of generation_config.json, sampling.stop_token_ids, stop strings that are special tokens.

A tiny random model samples a fixed seeded completion (eos ignored); the test then names one of the ids it emits
`<|endoftext|>` (a special token of the test tokenizer, as Qwen's second eos) and checks each rule stops exactly
there: same tokens and bitwise-equal logprobs up to it, finish_reason "stop", alone and inside a batch."""
import json

import pytest
import torch

from onpolicy.build import check_context
from onpolicy.config import ConfigError, ExperimentConfig, SamplingArgs
from onpolicy.engine import LLM, EngineConfig, SamplingParams
from onpolicy.model import load_pretrained, save_pretrained
from onpolicy.model.tiny import CHARS, SPECIAL_TOKENS, build_tiny

BASE = len(SPECIAL_TOKENS) + len(CHARS)  # ids below are characters; the 40 above are special tokens
VOCAB = BASE + 40
PROMPT = [20, 31, 42, 9]
MAX_TOKENS = 24


def _params(seed, **kw):
    return SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, seed=seed, **kw)


@pytest.fixture(scope="module")
def emitted():
    """(model, seed, base completion, X = a special id it emits at position >= 1, Y = a special id it never
    emits): found by scanning seeds, deterministically."""
    model, _ = build_tiny(seed=4, head_dim=64, num_hidden_layers=1, vocab_size=VOCAB)
    llm = LLM(model.eval(), None, EngineConfig(num_blocks=32, block_size=8))
    for seed in range(50):
        base = llm.generate([PROMPT], _params(seed, ignore_eos=True))[0].outputs[0]
        specials = [t for t in base.token_ids[1:] if t >= BASE]
        unused = [t for t in range(BASE, VOCAB) if t not in base.token_ids]
        if specials and base.token_ids[0] not in specials:
            return model, seed, base, specials[0], unused[0]
    pytest.fail("no seed emits a special token")


@pytest.fixture()
def qwen_like(emitted, chat_tokenizer):
    """A tokenizer whose eos is `<|im_end|>` (= Y, never emitted) and whose `<|endoftext|>` is X (emitted)."""
    _, _, _, x, y = emitted
    return chat_tokenizer(VOCAB, {"<|im_end|>": y, "<|endoftext|>": x}, eos="<|im_end|>")


def _cut(base, x):
    return base.token_ids.index(x) + 1


def test_stops_on_second_eos_of_generation_config(tmp_path, emitted, qwen_like):
    model, seed, base, x, y = emitted
    save_pretrained(model, str(tmp_path))
    qwen_like.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [y, x], "bos_token_id": 1}))
    loaded, _ = load_pretrained(str(tmp_path))
    assert loaded.generation_settings.eos_token_ids(qwen_like) == [y, x]
    llm = LLM(loaded, qwen_like, EngineConfig(num_blocks=32, block_size=8))
    out = llm.generate([PROMPT], _params(seed))[0].outputs[0]
    k = _cut(base, x)
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[:k] and k < MAX_TOKENS
    assert torch.equal(out.logprobs, base.logprobs[:k])
    # ignore_eos skips every eos id; without the file only the tokenizer's eos (never emitted) stops
    assert llm.generate([PROMPT], _params(seed, ignore_eos=True))[0].outputs[0].finish_reason == "length"
    plain = LLM(model, qwen_like, EngineConfig(num_blocks=32, block_size=8))
    assert plain.generate([PROMPT], _params(seed))[0].outputs[0].token_ids == base.token_ids


def test_stop_decision_does_not_depend_on_the_batch(emitted, qwen_like):
    model, seed, base, x, _ = emitted
    llm = LLM(model, qwen_like, EngineConfig(num_blocks=64, block_size=8))
    llm.eos_token_ids = [qwen_like.eos_token_id, x]
    others = [[5 + i, 9, 13 + 2 * i] for i in range(5)]
    outs = llm.generate(others[:2] + [PROMPT] + others[2:], [_params(100 + i) for i in range(2)] + [_params(seed)]
                        + [_params(200 + i) for i in range(3)])
    alone = llm.generate([PROMPT], _params(seed))[0].outputs[0]
    got = outs[2].outputs[0]
    assert got.token_ids == alone.token_ids == base.token_ids[:_cut(base, x)]
    assert torch.equal(got.logprobs, alone.logprobs) and got.finish_reason == alone.finish_reason == "stop"


def test_stop_string_that_is_a_special_token(emitted, qwen_like):
    model, seed, base, x, _ = emitted
    llm = LLM(model, qwen_like, EngineConfig(num_blocks=32, block_size=8))
    out = llm.generate([PROMPT], _params(seed, stop=["<|endoftext|>"]))[0].outputs[0]
    k = _cut(base, x)
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[:k]
    assert out.text == qwen_like.decode(base.token_ids[:k], skip_special_tokens=True)  # the token, not its text
    both = llm.generate([PROMPT], _params(seed, stop=["<|endoftext|>", "never"]))[0].outputs[0]
    assert both.token_ids == out.token_ids and both.text == out.text
    with pytest.raises(ValueError, match=r"params\[0\].stop: 'x<\|endoftext\|>' contains the special token"):
        llm.generate([PROMPT], _params(seed, stop=["x<|endoftext|>"]))
    steps = llm.stats["steps"]
    with pytest.raises(ValueError, match="contains the special token"):
        llm.generate([PROMPT, PROMPT], [_params(seed), _params(seed, stop=["<|im_end|>!"])])
    assert llm.stats["steps"] == steps and not llm.has_unfinished()


def test_stop_token_ids_in_config_reach_the_engine(emitted, qwen_like):
    from onpolicy.trainer.rollout import generate_rollouts

    model, _, _, x, _ = emitted
    llm = LLM(model, qwen_like, EngineConfig(num_blocks=64, block_size=8))
    sampling = SamplingArgs(num_generations=4, max_tokens=MAX_TOKENS, stop_token_ids=[x])
    ro = generate_rollouts(llm, [PROMPT, PROMPT[:2]], sampling, run_seed=0, step=0)
    unstopped = generate_rollouts(llm, [PROMPT, PROMPT[:2]], SamplingArgs(num_generations=4, max_tokens=MAX_TOKENS),
                                  run_seed=0, step=0)
    assert any(r == "stop" for r in ro.finish_reasons)
    for ids, full, reason, full_reason in zip(ro.completion_ids, unstopped.completion_ids, ro.finish_reasons,
                                              unstopped.finish_reasons):
        cut = full.index(x) + 1 if x in full else len(full)  # (full may end early on the tokenizer's eos)
        assert ids == full[:cut] and reason == ("stop" if x in full else full_reason)


def test_stop_token_ids_validation(emitted):
    model, seed, _, _, _ = emitted
    with pytest.raises(ConfigError, match=r"sampling.stop_token_ids: got \[3, -1\]; allowed: a list of token ids >= 0"):
        SamplingArgs(stop_token_ids=[3, -1])
    with pytest.raises(ConfigError, match=r"sampling.stop_token_ids\[0\]: expected an int"):
        SamplingArgs(stop_token_ids=["eos"])
    cfg = ExperimentConfig(sampling={"stop_token_ids": [2, 100_000]})
    with pytest.raises(ConfigError,
                       match=rf"sampling.stop_token_ids: got \[100000\]; allowed: token ids in \[0, {BASE}\)"):
        check_context(cfg)
    llm = LLM(model, None, EngineConfig(num_blocks=32, block_size=8))
    with pytest.raises(ValueError, match=r"SamplingParams.stop_token_ids: must be None or a list of ints >= 0"):
        llm.generate([PROMPT, PROMPT], [_params(seed), _params(seed, stop_token_ids=[-1])])
    assert llm.stats["steps"] == 0
