"""LLM front end: input validation before any compute, stop rules, seeds, text, invariant=False, cache reset."""
import pytest
import torch

from onpolicy.engine import LLM, EngineConfig, SamplingParams


BAD_PARAMS = [
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(n=0), "n"),
    (dict(stop=[3]), "stop"),
    (dict(stop=5), "stop"),
    (dict(stop_token_ids=["a"]), "stop_token_ids"),
    (dict(seed=1.5), "seed"),
]


@pytest.mark.parametrize("kwargs,field", BAD_PARAMS)
def test_bad_sampling_params_rejected_before_compute(llm, kwargs, field):
    good = SamplingParams(max_tokens=2)
    with pytest.raises(ValueError, match=field):
        llm.generate(["ab", "cd"], [good, SamplingParams(**kwargs)])
    assert llm.stats["steps"] == 0 and not llm.has_unfinished()  # the good request did not half-run


@pytest.mark.parametrize("prompts,match", [
    ([""], "empty prompt"),
    ([[]], "empty prompt"),
    ([[1, 2, 10_000]], r"token ids must be in \[0, "),
    ([[1] * 250], "context limit"),
    ([3.5], "prompts\\[0\\]"),
    ([], "empty list"),
    ("abc", "list"),
])
def test_bad_prompts_rejected(llm, prompts, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompts, SamplingParams(max_tokens=8))
    assert llm.stats["steps"] == 0


def test_bad_engine_config_and_cache_too_small(tiny):
    with pytest.raises(ValueError, match="block_size"):
        LLM(tiny[0], tiny[1], EngineConfig(block_size=0))
    with pytest.raises(ValueError, match="num_blocks"):
        LLM(tiny[0], tiny[1], EngineConfig(num_blocks=0))
    small = LLM(tiny[0], tiny[1], EngineConfig(num_blocks=2, block_size=4))
    with pytest.raises(ValueError, match="num_blocks"):
        small.generate([[5] * 6], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="params"):
        small.generate([[5], [6]], [SamplingParams()])


def test_stop_token_ids_eos_and_length(llm, tiny):
    _, tok = tiny
    base = llm.generate(["hello"], SamplingParams(temperature=1.0, max_tokens=12, seed=5, ignore_eos=True))[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 12
    stop_id = base.token_ids[4]
    first = base.token_ids.index(stop_id)
    out = llm.generate(["hello"], SamplingParams(temperature=1.0, max_tokens=12, seed=5, stop_token_ids=[stop_id],
                                                 ignore_eos=True))[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[: first + 1]
    assert torch.equal(out.logprobs, base.logprobs[: first + 1])
    # eos ends a sequence unless ignore_eos (pretend the stop token is the eos id)
    llm.eos_token_id = stop_id
    out = llm.generate(["hello"], SamplingParams(temperature=1.0, max_tokens=12, seed=5))[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[: first + 1]
    out = llm.generate(["hello"], SamplingParams(temperature=1.0, max_tokens=12, seed=5, ignore_eos=True))[0].outputs[0]
    assert out.finish_reason == "length" and out.token_ids == base.token_ids


def test_stop_string_cut_from_text_tokens_kept(llm, tiny):
    _, tok = tiny
    p = SamplingParams(temperature=1.0, max_tokens=12, seed=9, ignore_eos=True)
    base = llm.generate(["xy"], p)[0].outputs[0]
    full_text = tok.decode(base.token_ids, skip_special_tokens=True)
    assert base.text == full_text
    stop = full_text[3:5]
    out = llm.generate(["xy"], SamplingParams(temperature=1.0, max_tokens=12, seed=9, ignore_eos=True, stop=[stop]))[0]
    c = out.outputs[0]
    cut = full_text.index(stop)
    assert c.finish_reason == "stop" and c.text == full_text[:cut]
    assert tok.decode(c.token_ids, skip_special_tokens=True).endswith(stop)  # the stop string's tokens stay
    assert c.token_ids == base.token_ids[: len(c.token_ids)]


def test_seeds_unseeded_and_greedy(tiny):
    model, tok = tiny
    mk = lambda: LLM(model, tok, EngineConfig(num_blocks=64), seed=7)  # noqa: E731
    p = SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True)
    a = mk().generate(["abc", "abc"], p)
    b = mk().generate(["abc", "abc"], p)
    # unseeded requests draw seeds from the engine's seeded generator: reproducible per engine seed,
    # different between requests
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    assert a[0].outputs[0].token_ids != a[1].outputs[0].token_ids
    g = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    out = mk().generate(["abc"], g)[0].outputs[0]
    with torch.no_grad():
        from onpolicy.model import sequence_logprobs

        lp = sequence_logprobs(model, [tok.encode("abc")], [out.token_ids], 1.0)[0]
    assert torch.equal(lp, out.logprobs)
    assert bool((out.logprobs <= 0).all())


def test_logprobs_off_and_request_output_fields(llm):
    outs = llm.generate([[5, 6, 7], "hi"], SamplingParams(n=2, max_tokens=3, logprobs=False, seed=1))
    assert [o.request_id for o in outs] == sorted(o.request_id for o in outs)
    assert outs[0].prompt is None and outs[1].prompt == "hi" and outs[0].prompt_token_ids == [5, 6, 7]
    assert [c.index for c in outs[0].outputs] == [0, 1]
    assert all(c.logprobs is None and len(c.token_ids) <= 3 for o in outs for c in o.outputs)


def test_invariant_false_runs_reference_ops(tiny, monkeypatch):
    from onpolicy import kernels

    model, tok = tiny
    seen = []
    orig = kernels.linear

    def spy(*a, **k):
        seen.append(kernels.is_invariant())
        return orig(*a, **k)

    monkeypatch.setattr(kernels, "linear", spy)
    llm = LLM(model, tok, EngineConfig(num_blocks=32))
    with kernels.invariant_mode(False):  # the engine follows the caller's mode (trainer.invariant)
        out = llm.generate(["ab"], SamplingParams(max_tokens=3, seed=0))[0].outputs[0]
    assert seen and not any(seen) and len(out.token_ids) >= 1
    seen.clear()
    llm.generate(["ab"], SamplingParams(max_tokens=3, seed=0))
    assert seen and all(seen)


def test_reset_prefix_cache(llm):
    p = SamplingParams(max_tokens=2, seed=0)
    llm.generate([[5] * 30], p)
    hits = llm.block_manager.num_hits
    llm.generate([[5] * 30], p)
    assert llm.block_manager.num_hits > hits
    llm.reset_prefix_cache()
    hits = llm.block_manager.num_hits
    llm.generate([[5] * 30], p)
    assert llm.block_manager.num_hits == hits


def test_auto_num_blocks_cpu(tiny):
    model, tok = tiny
    llm = LLM(model, tok, EngineConfig(max_num_seqs=3, block_size=16))
    # enough for max_num_seqs full-context sequences (well under the CPU memory cap for the tiny model)
    assert llm.runner.num_blocks == 3 * (model.config.max_position_embeddings // 16)
    assert llm.runner.kv_caches[0][0].shape[0] == llm.runner.num_blocks * 16


def test_engine_imports_without_optional_packages():
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('datasets', 'wandb', 'trl'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import onpolicy.engine, onpolicy.engine.graphs\n"
            "print('ok')\n")
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.stdout.strip() == "ok", out.stderr


def test_generate_refuses_while_add_request_work_is_pending(llm):
    """generate() would finish an add_request() request with no one to hand its output to: refuse instead."""
    rid = llm.add_request([5, 6], SamplingParams(max_tokens=2, seed=0))
    with pytest.raises(ValueError, match=r"LLM.generate: 1 request\(s\) added with add_request\(\) are unfinished"):
        llm.generate([[7]], SamplingParams(max_tokens=2))
    done = []
    while llm.has_unfinished():
        done += llm.step()
    assert [o.request_id for o in done] == [rid]
    assert len(llm.generate([[7]], SamplingParams(max_tokens=2, seed=0))) == 1
