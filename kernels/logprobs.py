"""PLACEHOLDER: reference-only logprob ops."""
import torch
import torch.nn.functional as F

VOCAB_CHUNK = 4096


def log_softmax_reference(x):
    return torch.log_softmax(x.float(), dim=-1)


def lm_logits_reference(hidden, weight, temperature=1.0):
    return F.linear(hidden, weight).float() / temperature


def token_logprobs_reference(hidden, weight, targets, temperature=1.0):
    logp = torch.log_softmax(lm_logits_reference(hidden, weight, temperature), dim=-1)
    return logp.gather(-1, targets.long()[:, None])[:, 0]


log_softmax = log_softmax_reference
lm_logits = lm_logits_reference
token_logprobs = token_logprobs_reference
