"""Multi-turn rollouts are token-in / token-out and bitwise on-policy: every model token of every turn keeps the
sampler's own id, and the trainer's packed forward over the whole trajectory (prompt, turns and observations)
gives logprobs torch.equal to the sampler's -- with ragged turn counts, ragged observations, prefix-cache hits,
chunked prefill and preemption, on a template without special tokens and on ChatML with special tokens."""
import pytest
import torch

from onpolicy.config import SamplingArgs
from onpolicy.envs.config import EnvArgs
from onpolicy.envs.rollout import generate_trajectories
from onpolicy.model import sequence_logprobs
from tests.envs.conftest import Scripted, engine, scripted_rows


class Recording:
    """The engine, keeping every completion it returned (the sampler's own ids and logprobs)."""

    def __init__(self, llm):
        self.llm, self.model, self.completions = llm, llm.model, []

    def generate(self, prompts, params):
        outs = self.llm.generate(prompts, params)
        self.completions += [(list(p), sp.seed, o.outputs[0]) for p, sp, o in zip(prompts, params, outs)]
        return outs


def _rollout(model, tok, rows, stop, temperature=1.0, g=2, **engine_kw):
    llm = Recording(engine(model, tok, **engine_kw))
    env_args = EnvArgs(name="x", max_turns=4, max_total_tokens=120, stop=stop)
    sampling = SamplingArgs(num_generations=g, max_tokens=5, temperature=temperature)
    with torch.no_grad():
        ro = generate_trajectories(llm, tok, rows, Scripted, sampling, env_args, run_seed=7, step=3)
    return llm, ro


def _assert_parity(model, ro, temperature=1.0):
    with torch.no_grad():
        trainer = sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, temperature, score_masks=ro.score_masks)
    for i, (s, t) in enumerate(zip(ro.sampler_logprobs, trainer)):
        assert s.shape == t.shape == (int(ro.loss_mask[i].sum()),)
        assert torch.equal(s, t), f"trajectory {i}: max |diff| {float((s - t).abs().max())}"


def _assert_sampler_ids(rec: Recording, ro):
    """Each trajectory's model tokens are, turn by turn, exactly the ids the engine returned for that turn's
    seeded request, whose prompt was the trajectory so far."""
    from onpolicy.envs.rollout import turn_seed

    asked = {(tuple(p), seed): c for p, seed, c in rec.completions}
    for i, (prompt, ids, mask) in enumerate(zip(ro.prompt_ids, ro.completion_ids, [m.tolist() for m in ro.loss_mask])):
        pos, turns = 0, 0
        while pos < len(ids):
            comp = asked[(tuple(prompt + ids[:pos]), turn_seed(7, 3, ro.group_index[i], i % ro.group_size, turns))]
            n = len(comp.token_ids)
            assert ids[pos:pos + n] == list(comp.token_ids) and all(mask[pos:pos + n])
            assert torch.equal(ro.sampler_logprobs[i][sum(mask[:pos]):sum(mask[:pos]) + len(comp.token_ids)],
                               comp.logprobs)
            pos += len(comp.token_ids)
            turns += 1
            while pos < len(ids) and not mask[pos]:  # the observation's tokens
                pos += 1
        assert turns == ro.num_turns[i]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_every_model_token_of_every_turn_is_on_policy(tiny_chat, temperature):
    model, tok = tiny_chat
    rows = scripted_rows(5)
    rec, ro = _rollout(model, tok, rows, stop=["\n"], temperature=temperature)
    assert len(set(ro.num_turns)) == 4, "turn counts must be ragged"
    assert ro.finish_reasons.count("done") == len(ro.finish_reasons)
    assert ro.num_turns == [r["turns"] for r in rows for _ in range(2)]
    assert ro.turn_rewards[3 * 2] == [0.5, 0.5, 0.5, 1.0]
    assert rec.llm.block_manager.num_hits > 0, "later turns must hit the prefix cache"
    _assert_parity(model, ro, temperature)
    _assert_sampler_ids(rec, ro)


def test_chatml_special_tokens_chunked_prefill_and_preemption(chatml):
    model, tok = chatml
    rows = scripted_rows(5)
    rec, ro = _rollout(model, tok, rows, stop=["</tool_call>"], num_blocks=40, block_size=4,
                       max_num_batched_tokens=32, max_num_seqs=6)
    assert rec.llm.block_manager.num_hits > 0 and rec.llm.scheduler.num_preemptions > 0
    assert len(set(ro.num_turns)) >= 3
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), tok.encode("\n")[0]
    for ids, mask in zip(ro.completion_ids, [m.tolist() for m in ro.loss_mask]):
        for j in range(1, len(ids)):
            if mask[j - 1] and not mask[j]:  # an observation starts: the template's turn closer, less what was sampled
                assert (ids[j] == newline) if ids[j - 1] == im_end else (ids[j] == im_end)
    _assert_parity(model, ro)
    _assert_sampler_ids(rec, ro)


def test_same_seeds_same_trajectories_in_another_batch(tiny_chat):
    """A trajectory's tokens depend on (run seed, step, prompt index, sample, turn) only, not on its batch."""
    model, tok = tiny_chat
    rows = scripted_rows(4)
    _, whole = _rollout(model, tok, rows, stop=["\n"])
    llm = engine(model, tok)
    env_args = EnvArgs(name="x", max_turns=4, max_total_tokens=120, stop=["\n"])
    sampling = SamplingArgs(num_generations=2, max_tokens=5)
    with torch.no_grad():
        part = generate_trajectories(llm, tok, rows[2:3], Scripted, sampling, env_args, run_seed=7, step=3,
                                     first_index=2)
    assert part.completion_ids == whole.completion_ids[4:6] and part.group_index == whole.group_index[4:6]
    assert all(torch.equal(a, b) for a, b in zip(part.sampler_logprobs, whole.sampler_logprobs[4:6]))
