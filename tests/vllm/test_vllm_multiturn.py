"""Multi-turn rollouts on the vLLM backend: the same trajectories as the native engine (seeded turns, text stop
strings ending turns, prefix-cache hits across turns) and trainer logprobs torch.equal on every model token."""
import torch

from onpolicy import kernels
from onpolicy.config import SamplingArgs
from onpolicy.engine import LLM, EngineConfig
from onpolicy.envs.config import EnvArgs
from onpolicy.envs.guess import Guess
from onpolicy.envs.rollout import generate_trajectories
from onpolicy.model import build_tiny, sequence_logprobs
from onpolicy.model.tiny import TINY_CHAT_TEMPLATE
from onpolicy.tasks import make_examples


def test_vllm_multiturn_matches_native_and_trainer():
    from onpolicy.engine.vllm_backend import VllmLLM

    model, tok = build_tiny(seed=1, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                            max_position_embeddings=128)
    tok.chat_template = TINY_CHAT_TEMPLATE
    rows = make_examples("guess", 6, seed=0)
    env_args = EnvArgs(name="guess", max_turns=4, max_total_tokens=80, stop=["\n"])
    sampling = SamplingArgs(num_generations=4, max_tokens=3)
    runs = []
    with kernels.invariant_mode(True), torch.no_grad():
        for llm in (VllmLLM(model, tok, EngineConfig(max_num_batched_tokens=64, max_num_seqs=32), seed=0),
                    LLM(model, tok, EngineConfig(block_size=16))):
            runs.append(generate_trajectories(llm, tok, rows, Guess, sampling, env_args, run_seed=3, step=1))
        ours, native = runs
        trainer = sequence_logprobs(model, ours.prompt_ids, ours.completion_ids, 1.0, score_masks=ours.score_masks)
    assert ours.completion_ids == native.completion_ids
    assert [m.tolist() for m in ours.loss_mask] == [m.tolist() for m in native.loss_mask]
    assert max(ours.num_turns) > 1
    for s, n, t in zip(ours.sampler_logprobs, native.sampler_logprobs, trainer):
        assert torch.equal(s, n) and torch.equal(s, t)
