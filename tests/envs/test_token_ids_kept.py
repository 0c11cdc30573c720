"""Why trajectories keep the sampler's ids: with a subword (BPE) tokenizer, decoding a sampled trajectory and
encoding the text again gives other ids (the model may sample "1","2" where the tokenizer would write "12"), so a
trainer that re-tokenizes scores tokens the sampler never produced. Our trajectories hold the sampler's own ids,
and the trainer's logprobs over them equal the sampler's bitwise."""
import torch

from onpolicy.config import SamplingArgs
from onpolicy.envs.config import EnvArgs
from onpolicy.envs.rollout import generate_trajectories
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import CHARS, SPECIAL_TOKENS, TINY_CHAT_TEMPLATE, build_tiny
from tests.envs.conftest import Scripted, engine, scripted_rows

MERGED = "0123456789abcdefghij"


def bpe_tokenizer():
    """Characters of the tiny alphabet plus one token for every pair of MERGED characters (merges in order)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + list(CHARS))}
    merges = [(a, b) for a in MERGED for b in MERGED]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def test_reencoding_changes_ids_ours_are_the_samplers():
    tok = bpe_tokenizer()
    model, _ = build_tiny(seed=4, head_dim=64, num_hidden_layers=1, vocab_size=len(tok), max_position_embeddings=256)
    model.eval()
    env_args = EnvArgs(name="x", max_turns=3, max_total_tokens=100, stop=["\n"])
    with torch.no_grad():
        ro = generate_trajectories(engine(model, tok), tok, scripted_rows(4), Scripted,
                                   SamplingArgs(num_generations=2, max_tokens=8), env_args, run_seed=1, step=0)
        trainer = sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, 1.0, score_masks=ro.score_masks)
    changed = 0
    for i, (prompt, ids) in enumerate(zip(ro.prompt_ids, ro.completion_ids)):
        assert torch.equal(trainer[i], ro.sampler_logprobs[i])
        reencoded = tok.encode(tok.decode(prompt + ids), add_special_tokens=False)
        changed += reencoded != prompt + ids
    assert changed >= len(ro.completion_ids) // 2, "with this tokenizer many trajectories' texts re-encode to other ids"
