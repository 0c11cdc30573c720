"""`call_all(fns, timeout_s, max_workers)`: run environment calls concurrently, each within its own time limit.

Every call runs on a daemon thread (at most `max_workers` at once); a call's clock starts when it starts
running. A call that raises gives `Outcome(error=...)`; one still running after `timeout_s` gives
`Outcome(timed_out=True)` and is abandoned: its thread is left to finish on its own (Python cannot stop a
thread), its seat is handed to the next call, and being a daemon it never holds up the process's exit. So one
slow or hung environment costs its own trajectory, never the step or the run.
Left out: killing a hung call (use a subprocess inside the environment for that), async environments.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    seconds: float = 0.0


class _Call:
    __slots__ = ("fn", "started", "finished", "outcome", "abandoned")

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.started, self.finished, self.abandoned = fn, None, False, False
        self.outcome = Outcome()


def call_all(fns: list[Callable[[], Any]], timeout_s: float | None, max_workers: int) -> list[Outcome]:
    """Outcomes of `fns` in their order. `timeout_s=None`: no time limit."""
    if max_workers < 1:
        raise ValueError(f"max_workers (env.num_workers) must be >= 1; got {max_workers}")
    calls = [_Call(fn) for fn in fns]
    lock = threading.Condition()
    seats = threading.Semaphore(max_workers)

    def body(call: _Call) -> None:
        seats.acquire()
        with lock:
            call.started = time.monotonic()
            lock.notify_all()  # the waiter learns this call's deadline
        value, error = None, None
        try:
            value = call.fn()
        except BaseException as e:  # noqa: BLE001 -- reported as this call's outcome
            error = e
        with lock:
            call.finished = True
            if not call.abandoned:  # an abandoned call's outcome is its timeout, and its seat was handed on
                call.outcome = Outcome(value, error, False, time.monotonic() - call.started)
                seats.release()
            lock.notify_all()

    for call in calls:
        threading.Thread(target=body, args=(call,), daemon=True, name="onpolicy-env").start()
    with lock:
        while True:
            pending = [c for c in calls if not c.finished and not c.abandoned]
            if not pending:
                break
            now = time.monotonic()
            wait, abandoned = None, False
            for c in pending:
                if timeout_s is None or c.started is None:
                    continue
                left = c.started + timeout_s - now
                if left <= 0:
                    c.abandoned = True
                    c.outcome = Outcome(timed_out=True, seconds=now - c.started)
                    seats.release()
                    abandoned = True
                else:
                    wait = left if wait is None else min(wait, left)
            if not abandoned:  # else look again at once: nothing may be left to wait for
                lock.wait(timeout=wait)
    return [c.outcome for c in calls]
