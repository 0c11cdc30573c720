"""A local HF `*ForSequenceClassification` directory as a reward (`rewards: [{model: path/to/rm}]`).

The reward is the score head's output (`num_labels: 1`) at the last non-pad token, pooled as transformers'
sequence classifiers pool: the rightmost token whose id is not config.json's `pad_token_id` (the last token
when there is none). The text the model reads is prompt + completion as TRL builds it: strings are
concatenated; chat data (message lists) goes through the reward model's own chat template; either is
tokenized with the reward model's own tokenizer, without added special tokens.

Where `onpolicy.model` supports the architecture (its `load_config` accepts the config.json), the decoder is
our `CausalLM` on the batch-invariant kernels (weights through `onpolicy.model.loading.load_weights`, the
`score` head through `kernels.linear`), always in invariant mode: a completion's reward is the same bits
alone or in any batch. Otherwise transformers' `AutoModelForSequenceClassification` scores each text alone (a
batch of one, so its score does not depend on the batch either; slower) in transformers' default dtype.
Weights load on the first call (`onpolicy.trainer` loads them before the first step, on the policy's device).
Left out: hub ids (pass a local directory), multi-label heads, reward models sharded across GPUs, an RM dtype
other than its checkpoint's.
"""
from __future__ import annotations

import json
import os

import torch

MAX_BATCH_TOKENS = 16384  # tokens per packed forward; sequences are never split, so a longer one runs alone
SCORE_ROWS = 16  # the score head's row, zero-padded (only output column 0 is read)
_MODELS: dict[str, "RewardModel"] = {}


def reward_model(path: str) -> "RewardModel":
    """The RewardModel for directory `path` (one per directory per process; checked, weights not yet loaded)."""
    key = os.path.abspath(path)
    if key not in _MODELS:
        _MODELS[key] = RewardModel(path)
    return _MODELS[key]


def _read_hf_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory; allowed: a local HF *ForSequenceClassification directory")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ValueError(f"{path!r} has no config.json; allowed: a local HF *ForSequenceClassification directory")
    with open(cfg_file) as f:
        hf = json.load(f)
    classes = hf.get("architectures") or []
    if not any(c.endswith("ForSequenceClassification") for c in classes):
        raise ValueError(f"{path!r} holds {classes or 'no architectures'}; allowed: a *ForSequenceClassification "
                         "model (a reward model)")
    labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
    if labels != 1:
        raise ValueError(f"{path!r} has a score head with {labels} outputs; allowed: num_labels 1 (one reward)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{path!r} has no tokenizer (tokenizer.json / tokenizer_config.json); the reward model "
                         "reads text with its own tokenizer")
    return hf


def pooled_index(ids: list[int], pad_token_id: int | None) -> int:
    """transformers' pooling: the rightmost position whose id is not the pad id (0 when all are pad)."""
    if pad_token_id is None:
        return len(ids) - 1
    return max((i for i, t in enumerate(ids) if t != pad_token_id), default=0)


class RewardModel:
    """Callable reward `fn(prompts, completions, **kwargs) -> list[float]` backed by a sequence classifier."""

    def __init__(self, path: str):
        self.path = path
        self.hf_config = _read_hf_config(path)
        self.__name__ = os.path.basename(os.path.normpath(os.path.abspath(path)))
        self.pad_token_id = self.hf_config.get("pad_token_id")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backend: str | None = None  # "onpolicy" or "transformers", set on load
        self._model = self._score = self._tokenizer = None

    def to(self, device) -> "RewardModel":
        """Run on `device` (moves the weights when already loaded)."""
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        if self._score is not None:
            self._score = self._score.to(self.device)
        return self

    def load(self) -> "RewardModel":
        """Load the tokenizer and weights (once): our CausalLM where supported, else transformers."""
        if self._tokenizer is not None:
            return self
        from onpolicy.model import load_tokenizer
        from onpolicy.model.loading import load_config

        self._tokenizer = load_tokenizer(self.path)
        try:
            config = load_config(self.path)
        except ValueError:
            config = None
        if config is None:
            from transformers import AutoModelForSequenceClassification

            self._model = AutoModelForSequenceClassification.from_pretrained(self.path)
            self._model.to(self.device).eval()
            self.backend = "transformers"
            return self
        from onpolicy.model import CausalLM
        from onpolicy.model.loading import load_weights

        model = CausalLM(config.replace(tie_word_embeddings=True), init=False)  # no LM head: the score head instead
        score = load_weights(model, self.path, keep=("score.weight",))["score.weight"]
        self._model = model.to(self.device).eval().requires_grad_(False)
        # the head's one row zero-padded to SCORE_ROWS: output rows of >= 16 bytes, as the GPU GEMM's TMA stores need
        head = torch.zeros(SCORE_ROWS, score.shape[1], dtype=config.torch_dtype)
        head[:1] = score
        self._score = head.to(self.device)
        self.backend = "onpolicy"
        return self

    def texts(self, prompts: list, completions: list) -> list[str]:
        """What the reward model reads: prompt + completion (strings), or the chat template over both (messages)."""
        out = []
        for p, c in zip(prompts, completions):
            if isinstance(p, str) and isinstance(c, str):
                out.append(p + c)
                continue
            if not (isinstance(p, list) and isinstance(c, list)):
                raise ValueError(f"prompts and completions must both be strings or both message lists, got {type(p).__name__} and {type(c).__name__}")
            if not getattr(self._tokenizer, "chat_template", None):
                raise ValueError(f"chat data needs a chat template, and the reward model's tokenizer at "
                                 f"{self.path!r} has none")
            out.append(self._tokenizer.apply_chat_template(p + c, tokenize=False))
        return out

    def token_ids(self, prompts: list, completions: list) -> list[list[int]]:
        self.load()
        texts = self.texts(prompts, completions)
        ids = [list(self._tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        if any(not x for x in ids):
            raise ValueError("a prompt + completion tokenizes to no tokens")
        return ids

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        ids = self.token_ids(prompts, completions)
        if self.backend == "transformers":
            return [self._hf_score(x) for x in ids]
        limit = self._model.config.max_position_embeddings
        if max(map(len, ids)) > limit:
            raise ValueError(f"a prompt + completion of {max(map(len, ids))} tokens exceeds the reward model's "
                             f"max_position_embeddings={limit}")
        scores: list[float] = []
        start = 0
        while start < len(ids):
            stop, tokens = start, 0
            while stop < len(ids) and (stop == start or tokens + len(ids[stop]) <= MAX_BATCH_TOKENS):
                tokens += len(ids[stop])
                stop += 1
            scores += self.score_packed(ids[start:stop])
            start = stop
        return scores

    def score_packed(self, ids: list[list[int]]) -> list[float]:
        """One packed varlen forward of our decoder over `ids`; the score head at each pooled token."""
        from onpolicy import kernels
        from onpolicy.model.metadata import AttentionMetadata

        flat = torch.tensor([t for x in ids for t in x], dtype=torch.int64, device=self.device)
        positions = torch.tensor([i for x in ids for i in range(len(x))], dtype=torch.int64, device=self.device)
        starts = [0]
        for x in ids:
            starts.append(starts[-1] + len(x))
        cu = torch.tensor(starts, dtype=torch.int32, device=self.device)
        rows = torch.tensor([s + pooled_index(x, self.pad_token_id) for s, x in zip(starts, ids)],
                            dtype=torch.int64, device=self.device)
        with kernels.invariant_mode(True):
            hidden = self._model(flat, positions, AttentionMetadata.for_training(cu))
            out = kernels.linear(hidden[rows], self._score)
        return out[:, 0].float().cpu().tolist()

    def _hf_score(self, ids: list[int]) -> float:
        x = torch.tensor([ids], dtype=torch.int64, device=self.device)
        return float(self._model(input_ids=x).logits[0, 0].float())
