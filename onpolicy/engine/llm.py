"""LLM: the offline engine front end -- validate, enqueue, step until done, detokenise, stop.

`generate` validates every request (prompt, SamplingParams, context limit, cache size) before any compute,
then runs `step()` until all finish. `add_request` + `step` allow requests to join mid-run. Stop rules
(onpolicy.engine.stopping): every eos id -- the tokenizer's and the model's generation_config.json's -- (unless
ignore_eos), stop_token_ids and stop strings that are one special token -> "stop" on that token; a text stop
string in the incrementally detokenised text (decoded without special tokens) -> "stop" (the string and what
follows are cut from the text, the tokens stay); max_tokens -> "length".
Async scheduling (EngineConfig.async_scheduling): see `step` / `_launch`. `abort(request_ids)` stops requests
and frees their blocks; any exception or Ctrl-C inside `generate` aborts that call's requests, waits for a step
in flight and forgets the prefix cache (keys may name blocks whose k/v was never computed), so the engine
stays usable. Left out: streaming outputs, online serving, chat templates (the caller applies them).
"""
from __future__ import annotations

import torch

from onpolicy.engine.kv_cache import BlockManager
from onpolicy.engine.params import (CompletionOutput, EngineConfig, RequestOutput, SamplingParams, checked_engine_args,
                                    params_per_prompt)
from onpolicy.engine.runner import ModelRunner
from onpolicy.engine.scheduler import FINISHED, Scheduler, Sequence
from onpolicy.engine.stopping import engine_eos_ids, find_stop, special_tokens, stop_rule


def _to_int64(seed: int) -> int:
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= (1 << 63) else seed


class LLM:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, seed: int = 0):
        """`seed` seeds the generator that gives unseeded requests (SamplingParams.seed=None) their seeds."""
        config = checked_engine_args("LLM", config, seed)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.runner = ModelRunner(model, config)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.seed_generator = torch.Generator().manual_seed(seed)
        self.eos_token_ids = engine_eos_ids(model, tokenizer)
        self.special_tokens = special_tokens(tokenizer)
        self.requests: dict[int, tuple[RequestOutput, list[Sequence]]] = {}
        self._next_id = 0
        self._inflight = None  # async scheduling: (runner.InFlight, its sampling sequences in row order)
        self.stats = {"steps": 0, "forward_tokens": 0, "generated_tokens": 0, "async_steps": 0, "wasted_rows": 0}

    @property
    def eos_token_id(self) -> int | None:
        """The first eos id (the tokenizer's); assigning one replaces `eos_token_ids` with it alone."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @eos_token_id.setter
    def eos_token_id(self, value: int | None) -> None:
        self.eos_token_ids = [] if value is None else [value]

    # ---- validation -------------------------------------------------------------------------------
    def _prompt_ids(self, prompt, i: int) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"prompts[{i}]: a str prompt needs a tokenizer; pass token ids or LLM(tokenizer=...)")
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
            text = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids, text = list(prompt), None
        else:
            raise ValueError(f"prompts[{i}]: must be a str or a list of int token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError(f"prompts[{i}]: empty prompt (0 tokens); need at least 1 token")
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompts[{i}]: token ids must be in [0, {vocab}), got {bad[:5]}")
        return text, ids

    def _validate(self, prompt_ids: list[int], params: SamplingParams, i: int) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params[{i}]: must be a SamplingParams, got {type(params).__name__}")
        params.validate()
        if params.stop and self.tokenizer is None:
            raise ValueError(f"params[{i}].stop: stop strings need a tokenizer (LLM(tokenizer=...)); use stop_token_ids")
        stop_rule(params, self.eos_token_ids, self.special_tokens, f"params[{i}]")
        limit = self.model.config.max_position_embeddings
        total = len(prompt_ids) + params.max_tokens
        if total > limit:
            raise ValueError(f"prompts[{i}]: prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = "
                             f"{total} exceeds the context limit max_position_embeddings={limit}")
        capacity = self.runner.num_blocks * self.config.block_size
        if total - 1 > capacity:
            raise ValueError(f"prompts[{i}]: needs {total - 1} KV slots but the cache holds {capacity} "
                             f"(engine.num_blocks={self.runner.num_blocks} x engine.block_size={self.config.block_size})")

    # ---- requests ---------------------------------------------------------------------------------
    def add_request(self, prompt, params: SamplingParams) -> int:
        """Validate and enqueue one request (its n sequences); returns its request id."""
        text, ids = self._prompt_ids(prompt, 0)
        self._validate(ids, params, 0)
        return self._enqueue(text, ids, params)

    def _enqueue(self, text, ids, params) -> int:
        rid = self._next_id
        self._next_id += 1
        if params.seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.seed_generator))
        else:
            seed = _to_int64(params.seed)
        seqs = [Sequence(rid, j, ids, params, seed) for j in range(params.n)]
        rule = stop_rule(params, self.eos_token_ids, self.special_tokens, "params")
        for s in seqs:
            s.stop_rule = rule
        self.requests[rid] = (RequestOutput(rid, text, list(ids)), seqs)
        for s in seqs:
            self.scheduler.add(s)
        return rid

    def abort(self, request_ids) -> list[int]:
        """Stop these requests and free their blocks (ids unknown or already finished are ignored, as vLLM does);
        returns the ids aborted. Their outputs are never returned."""
        aborted = []
        for rid in request_ids:
            entry = self.requests.pop(rid, None)
            if entry is None:
                continue
            for seq in entry[1]:
                if seq.status != FINISHED:
                    self.scheduler.finish(seq, "abort")
            aborted.append(rid)
        return aborted

    def _abandon(self, rids: list[int]) -> None:
        """After a failure inside generate: abort its requests, drop the step in flight, forget cached prefixes."""
        self.abort(rids)
        try:
            self._resolve()
        except Exception:  # noqa: BLE001 -- the caller's error is the one that propagates
            pass
        finally:
            self._inflight = None
            self.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (call after the weights change)."""
        self.block_manager.reset_prefix_cache()

    # ---- stepping ---------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduling step + forward; returns the requests that finished in it. With async scheduling a
        plain pure-decode step is launched before the previous step's tokens are read (see _launch)."""
        done: list[RequestOutput] = []
        if self._inflight is not None and self._may_admit():
            done = self._resolve()  # admission reads token ids (prefix keys, prefill inputs): resolve first
        chunks = self.scheduler.schedule()
        if not chunks and self._inflight is not None:
            return done + self._resolve()
        if not chunks and self.scheduler.waiting and not self.scheduler.running:
            chunks = self.scheduler.schedule()  # everything was preempted: admission is allowed now
            if not chunks:
                raise RuntimeError("LLM.step: no waiting sequence fits the KV cache; raise engine.num_blocks")
        if not chunks:
            return done
        sampled = [c.seq for c in chunks if c.samples]
        if self.config.async_scheduling and self.runner.can_launch(chunks, sampled):
            return done + self._launch(chunks, sampled)
        if self._inflight is not None:  # sequences that stop on the resolved tokens drop out of this step
            done += self._resolve()
            chunks = [c for c in chunks if c.seq.status != FINISHED]
            sampled = [c.seq for c in chunks if c.samples]
        if not chunks:
            return done
        tokens, logprobs = self.runner.step(chunks)
        self.stats["steps"] += 1
        self.stats["forward_tokens"] += self.scheduler.advance(chunks)
        self.stats["generated_tokens"] += len(sampled)
        for seq, tok, lp in zip(sampled, tokens, logprobs):
            seq.token_ids.append(tok)
            self._accept(seq, tok, lp, done)
        return done

    def _accept(self, seq: Sequence, tok: int, lp: float | None, done: list[RequestOutput]) -> None:
        """A sampled token now in seq.token_ids: keep its logprob (when asked for), then the stop checks."""
        if seq.params.logprobs:
            seq.logprobs.append(lp)
        reason = self._check_stop(seq, tok)
        if reason is not None:
            self._finish(seq, reason, done)

    def _may_admit(self) -> bool:
        """Whether this step's schedule may admit a waiting sequence (a free seat and someone waiting)."""
        return bool(self.scheduler.waiting) and len(self.scheduler.running) < self.config.max_num_seqs

    def _launch(self, chunks, sampled) -> list[RequestOutput]:
        """Async scheduling: launch this decode step (rows whose last token is still on the device read it
        there), then read and process the previous step's tokens while the GPU runs, then give this step's
        rows placeholders. A sequence that stops on the previous token has a wasted row in this step (its
        output is dropped); batch invariance keeps every other row's bits unchanged."""
        inflight = self.runner.launch(chunks, sampled)
        self.stats["steps"] += 1
        self.stats["async_steps"] += 1
        self.stats["forward_tokens"] += self.scheduler.advance(chunks)
        done = self._resolve()
        for i, seq in enumerate(sampled):
            if seq.status != FINISHED:
                seq.token_ids.append(-1)  # placeholder: its id is row i of `inflight`
                seq.pending_row = i
        self._inflight = (inflight, sampled)
        return done

    def _resolve(self) -> list[RequestOutput]:
        """Wait for the step in flight (if any); fill its placeholders, then the stop checks."""
        if self._inflight is None:
            return []
        inflight, sampled = self._inflight
        self._inflight = None
        tokens, logprobs = inflight.result()
        done: list[RequestOutput] = []
        for seq, tok, lp in zip(sampled, tokens, logprobs):
            if seq.status == FINISHED:
                self.stats["wasted_rows"] += 1  # it stopped on the token before
                continue
            seq.token_ids[-1] = tok
            seq.pending_row = -1
            self.stats["generated_tokens"] += 1
            self._accept(seq, tok, lp, done)
        return done

    def _finish(self, seq: Sequence, reason: str, done: list[RequestOutput]) -> None:
        if self.tokenizer is not None and not seq.stop_rule.strings:
            seq.text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        self.scheduler.finish(seq, reason)
        out = self._maybe_finish_request(seq.request_id)
        if out is not None:
            done.append(out)

    def _check_stop(self, seq: Sequence, tok: int) -> str | None:
        rule = seq.stop_rule
        if rule.strings:  # incremental text only when stop strings need it; else decoded once at the end
            self._detokenize(seq)
        if tok in rule.token_ids:
            return "stop"
        if rule.strings:
            # only text that could contain a stop string ending in the new characters is searched
            start = max(0, seq.stop_checked - max(len(s) for s in rule.strings) + 1)
            seq.stop_checked = len(seq.text)
            cut = find_stop(seq.text, rule.strings, start)
            if cut is not None:
                seq.text = seq.text[:cut]
                return "stop"
        if seq.num_output >= seq.params.max_tokens:
            return "length"
        return None

    def _detokenize(self, seq: Sequence) -> None:
        """Incremental decode (prefix/read offsets as vLLM): only the last few tokens are re-decoded."""
        out = seq.output_ids
        tok = self.tokenizer
        prefix = tok.decode(out[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
        full = tok.decode(out[seq.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            seq.text += full[len(prefix) :]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(out)

    def _maybe_finish_request(self, rid: int) -> RequestOutput | None:
        req, seqs = self.requests[rid]
        if any(s.finish_reason is None for s in seqs):
            return None
        req.outputs = [
            CompletionOutput(
                index=s.index,
                token_ids=s.output_ids,
                logprobs=torch.tensor(s.logprobs, dtype=torch.float32) if s.params.logprobs else None,
                text=s.text,
                finish_reason=s.finish_reason,
            )
            for s in seqs
        ]
        del self.requests[rid]
        return req

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for every prompt; outputs in prompt order. All requests are validated first."""
        if self.requests:  # their outputs would finish inside this call with no one to return them to
            raise ValueError(f"LLM.generate: {len(self.requests)} request(s) added with add_request() are unfinished; "
                             "step() until has_unfinished() is False first")
        plist = params_per_prompt(prompts, params)
        checked = []
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            text, ids = self._prompt_ids(prompt, i)
            self._validate(ids, p, i)
            checked.append((text, ids, p))
        rids: list[int] = []
        bar = None
        try:
            rids.extend(self._enqueue(text, ids, p) for text, ids, p in checked)
            results: dict[int, RequestOutput] = {}
            if use_tqdm:
                from tqdm import tqdm

                bar = tqdm(total=len(rids), desc="generate")
            wanted = set(rids)
            while wanted - results.keys():
                for out in self.step():
                    results[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
            self._resolve()  # a step of wasted rows may be in flight: wait, so the device is idle on return
        except BaseException:
            self._abandon(rids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[r] for r in rids]
