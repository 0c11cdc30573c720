"""`generate_trajectories`: multi-turn rollouts of one step over the engine, token in / token out.

    reset every trajectory's environment (concurrently) -> render its prompt with the chat template
    each round, until no trajectory is active:
        one engine call for every active trajectory's next turn (prompt = its ids so far; the engine's prefix
        cache holds their k/v, so only the newest observation and the turn are computed)
        -> step every environment with its turn (concurrently, each within env.step_timeout_s)
        -> append the observation's ids (onpolicy.envs.render: a delta, never re-encoding earlier turns)

Each turn is a seeded request (`turn_seed`: run seed, step, prompt, sample, turn), so a resumed run samples the
same trajectories. A turn ends on an eos id, a `sampling.stop` / `env.stop` string or token, or its token limit
(`sampling.max_tokens`, less when env.max_total_tokens or the context leave less room). The model's sampled ids
and logprobs are kept exactly as the engine returned them. Anything an environment raises, a timeout, or a
malformed return ends that trajectory (`env_error`, reason recorded); the step goes on. Works with any engine
with `generate(token-id prompts, [SamplingParams])` (the native engine and the vLLM backend).
Left out: trajectories that join the engine as their environment answers (a round waits for its slowest
environment, up to the timeout), partial rollouts carried across steps.
"""
from __future__ import annotations

import hashlib
import time
from functools import partial


from onpolicy.envs.base import EnvError, Turn, checked_messages, checked_step, close_quietly
from onpolicy.envs.render import ChatDelta, TemplateError
from onpolicy.envs.trajectory import EnvRollout, Trajectory, to_rollout
from onpolicy.envs.workers import call_all


def turn_seed(run_seed: int, step: int, prompt_index: int, sample: int, turn: int) -> int:
    """A 62-bit seed determined by (run seed, step, prompt index, sample, turn) only."""
    digest = hashlib.sha256(f"onpolicy-env:{run_seed}:{step}:{prompt_index}:{sample}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def _start(make_env, row: dict):
    env = make_env()
    return env, checked_messages(env.reset(row), "reset messages")


def _reset_all(trajs, rows, make_env, tokenizer, env_args, template_kwargs) -> float:
    """Construct and reset every trajectory's environment, render the prompts; returns the seconds spent."""
    from onpolicy.chat import encode_prompt

    t0 = time.perf_counter()
    first = trajs[0].group
    outcomes = call_all([partial(_start, make_env, rows[t.group - first]) for t in trajs],
                        env_args.step_timeout_s, env_args.num_workers)
    for t, out in zip(trajs, outcomes):
        row = rows[t.group - first]
        t.prompt_ids = encode_prompt(tokenizer, row)  # replaced below; kept for a trajectory that never starts
        if out.timed_out or out.error is not None:
            why = f"timed out after {env_args.step_timeout_s:g} s" if out.timed_out else _one_line(out.error)
            t.end("env_error", f"reset: {why}")
            continue
        t.env, t.prompt_messages = out.value
        t.delta = ChatDelta(tokenizer, template_kwargs, getattr(t.env, "tools", None))
        try:
            t.prompt_ids = t.delta.prompt_ids(t.prompt_messages)
        except Exception as e:  # noqa: BLE001 -- the template refused this environment's messages
            t.end("env_error", f"reset: rendering the messages raised {_one_line(e)}")
            continue
        t.history = list(t.prompt_messages)
    return time.perf_counter() - t0


def _turn_params(t: Trajectory, sampling, env_args, context: int, run_seed: int, step: int):
    from onpolicy.engine import SamplingParams

    room = min(sampling.max_tokens, env_args.max_total_tokens - len(t.ids),
               context - len(t.prompt_ids) - len(t.ids))
    if room < 1:
        return None
    return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                          max_tokens=room, stop=list(sampling.stop) + list(env_args.stop) or None,
                          stop_token_ids=list(sampling.stop_token_ids) or None,
                          seed=turn_seed(run_seed, step, t.group, t.sample, t.turns), logprobs=True)


def _sample_turns(llm, tokenizer, active: list[Trajectory], sampling, env_args, context, run_seed, step) -> list:
    """One engine call for the next turn of every active trajectory; -> [(trajectory, Turn)]."""
    asked = []
    for t in active:
        params = _turn_params(t, sampling, env_args, context, run_seed, step)
        if params is None:
            t.end("length")
        else:
            asked.append((t, params))
    if not asked:
        return []
    outputs = llm.generate([t.prompt_ids + t.ids for t, _ in asked], [p for _, p in asked])
    turns = []
    for (t, _), req in zip(asked, outputs):
        comp = req.outputs[0]
        ids = list(comp.token_ids)
        if comp.logprobs is None or comp.logprobs.numel() != len(ids):
            raise RuntimeError(f"trajectory {t.group}/{t.sample} turn {t.turns}: sampler logprobs missing or of "
                               "wrong length")
        text = tokenizer.decode(ids, skip_special_tokens=True)
        turn = Turn(text, ids, comp.finish_reason, t.turns)
        t.add_turn(ids, comp.logprobs.detach().float().cpu(), text)
        turns.append((t, turn))
    return turns


def _observe(t: Trajectory, turn: Turn, out, env_args, context: int) -> None:
    """Apply one step's outcome: reward, then end the trajectory or append the observation's ids."""
    if out.timed_out:
        return t.end("env_error", f"turn {turn.index}: step timed out after {env_args.step_timeout_s:g} s")
    if out.error is not None:
        return t.end("env_error", f"turn {turn.index}: step raised {_one_line(out.error)}")
    try:
        result = checked_step(out.value)
    except EnvError as e:
        return t.end("env_error", f"turn {turn.index}: {e}")
    t.turn_rewards.append(result.reward)
    if result.done:
        return t.end("done")
    if t.turns >= env_args.max_turns:
        return t.end("max_turns")
    try:
        ids = t.delta.observation_ids(t.history, list(turn.token_ids), turn.finish_reason == "stop",
                                      result.messages)
    except TemplateError as e:
        return t.end("env_error", f"turn {turn.index}: {e}")
    used = len(t.ids) + len(ids)
    if used >= env_args.max_total_tokens or len(t.prompt_ids) + used >= context:
        return t.end("length")
    t.add_observation(ids, result.messages)


def generate_trajectories(llm, tokenizer, rows: list[dict], make_env, sampling, env_args, *, run_seed: int,
                          step: int, first_index: int = 0, template_kwargs: dict | None = None) -> EnvRollout:
    """`sampling.num_generations` trajectories per row (prompt-major). `make_env`: a zero-argument factory
    (`onpolicy.envs.resolve_env`); `sampling` / `env_args`: the config's sections; `first_index`: the step-wide
    index of rows[0] (seeds, group_index); `template_kwargs`: `data.chat_template_kwargs`."""
    g = sampling.num_generations
    trajs = [Trajectory(first_index + i, j) for i in range(len(rows)) for j in range(g)]
    env_seconds = _reset_all(trajs, rows, make_env, tokenizer, env_args, template_kwargs)
    context = llm.model.config.max_position_embeddings
    try:
        while active := [t for t in trajs if t.active]:
            turns = _sample_turns(llm, tokenizer, active, sampling, env_args, context, run_seed, step)
            t0 = time.perf_counter()
            outcomes = call_all([partial(t.env.step, turn) for t, turn in turns], env_args.step_timeout_s,
                                env_args.num_workers)
            env_seconds += time.perf_counter() - t0
            for (t, turn), out in zip(turns, outcomes):
                _observe(t, turn, out, env_args, context)
    finally:
        t0 = time.perf_counter()
        closing = [t for t in trajs if t.env is not None]
        for t, out in zip(closing, call_all([partial(close_quietly, t.env) for t in closing],
                                            env_args.step_timeout_s, env_args.num_workers)):
            why = "close timed out" if out.timed_out else out.value
            if why and t.error is None:
                t.error = why
        env_seconds += time.perf_counter() - t0
    return to_rollout(trajs, g, env_seconds, tokenizer)
