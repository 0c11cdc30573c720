"""An environment that raises, hangs or returns something malformed ends its own trajectory with the reason
recorded; the other trajectories of the step, the engine and the run go on."""
import time

import torch

from onpolicy.config import SamplingArgs
from onpolicy.envs.config import EnvArgs
from onpolicy.envs.rollout import generate_trajectories
from onpolicy.envs.workers import call_all
from tests.envs.conftest import Scripted, engine, scripted_rows


class Faulty(Scripted):
    """Per row `fault`: raise in reset, raise in step 2, hang in step 1, return a bad value, or none."""

    def reset(self, row):
        if row["fault"] == "reset":
            raise RuntimeError("no sandbox\nleft")
        return super().reset(row)

    def step(self, turn):
        fault = self.row["fault"]
        if fault == "raise" and turn.index == 1:
            raise KeyError("boom")
        if fault == "hang":
            time.sleep(30)
        if fault == "bad":
            return "not a tuple"
        if fault == "assistant":
            return [{"role": "assistant", "content": "x"}], 0.0, False
        if fault == "reward":
            return [], float("nan"), True
        return super().step(turn)


FAULTS = ["reset", "raise", "hang", "bad", "assistant", "reward", None]


def test_faults_end_only_their_trajectory(tiny_chat):
    model, tok = tiny_chat
    rows = [{**r, "turns": 3, "fault": f} for r, f in zip(scripted_rows(len(FAULTS)), FAULTS)]
    env_args = EnvArgs(name="x", max_turns=4, max_total_tokens=100, stop=["\n"], step_timeout_s=1.0, num_workers=4)
    llm = engine(model, tok)
    t0 = time.perf_counter()
    with torch.no_grad():
        ro = generate_trajectories(llm, tok, rows, Faulty, SamplingArgs(num_generations=1, max_tokens=4), env_args,
                                   run_seed=0, step=0)
    assert time.perf_counter() - t0 < 25, "a hung environment must not hold up the step"
    assert ro.finish_reasons == ["env_error"] * 6 + ["done"]
    errors = ro.errors
    assert errors[0] == "reset: RuntimeError: no sandbox left" and ro.num_turns[0] == 0 and ro.seq_lens[0] == 0
    assert errors[1] == "turn 1: step raised KeyError: 'boom'" and ro.num_turns[1] == 2
    assert ro.turn_rewards[1] == [0.5]  # the turns before the failure keep their rewards
    assert errors[2] == "turn 0: step timed out after 1 s"
    assert errors[3].startswith("turn 0: step must return (messages, reward, done)")
    assert errors[4].startswith("turn 0: step messages[0] has role 'assistant'")
    assert errors[5].startswith("turn 0: step returned reward nan")
    assert errors[6] is None and ro.num_turns[6] == 3 and ro.turn_rewards[6] == [0.5, 0.5, 1.0]
    assert ro.metrics()["env/env_error_frac"] == 6 / 7
    # the engine is still usable, and the trajectory that never started has its row's prompt
    assert ro.prompt_ids[0] == tok.encode(rows[0]["prompt"]) and not llm.has_unfinished()


def test_call_all_order_errors_and_timeouts():
    def slow():
        time.sleep(20)

    def bad():
        raise ValueError("x")

    t0 = time.perf_counter()
    out = call_all([lambda: 1, slow, bad, lambda: 2, slow, lambda: 3], timeout_s=0.3, max_workers=2)
    assert time.perf_counter() - t0 < 5
    assert [o.value for o in out] == [1, None, None, 2, None, 3]
    assert [o.timed_out for o in out] == [False, True, False, False, True, False]
    assert isinstance(out[2].error, ValueError)
    assert [o.value for o in call_all([lambda: 4, lambda: 5], None, 1)] == [4, 5]


def test_calls_run_concurrently():
    t0 = time.perf_counter()
    call_all([lambda: time.sleep(0.5)] * 8, timeout_s=5, max_workers=8)
    assert time.perf_counter() - t0 < 2.5
