"""torch's CPU thread count for a run on the CPU: "auto" (`trainer.num_threads`, the default) or fixed ("share"
or N).

Why "auto" re-checks: torch's OpenMP threads meet at a barrier after every parallel op, so a team of 2 threads
on 2 cores, one of which another program keeps busy, waits for its descheduled thread at every op; the tiny
default then ran 3-5x slower, not the 2x that sharing the machine explains. "auto" therefore gives torch the
cores of this process's share that other programs leave free: `CpuThreads.update()` (called once per step)
reads the machine's busy time from /proc/stat, subtracts this process's own CPU time (os.times), and sets
`round(cores - others)` threads (cores: the machine's), at least 1 and at most the share
(`determinism.cpu_share`); the run starts with the share (`determinism.enable`). A decision needs
`MIN_WINDOW_S` of history, so short steps are pooled. A run's bits are those of any fixed count because
every CPU op gives the same bits for any thread count (MKL's GEMMs in its strict reproducible mode, set by
`onpolicy.determinism`; tests/invariance/test_thread_invariance*.py, which also switch the count mid-run).
Left out: non-Linux load readings ("auto" keeps the share there), inter-op threads, GPU runs (left alone).
"""
from __future__ import annotations

import os
import time

import torch

from onpolicy import determinism

MIN_WINDOW_S = 0.5  # seconds of history one decision needs
_STAT = "/proc/stat"


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (every state but idle and iowait); None off Linux."""
    try:
        with open(_STAT) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def threads_for_free_cores(cores: int, others_busy: float, share: int) -> int:
    """The thread count for `cores` cores of which other programs keep `others_busy` busy, within [1, share]."""
    return max(1, min(share, int(cores - others_busy + 0.5)))


class CpuThreads:
    """Adapts torch's thread count during a run (see module doc): `setting` is "auto", or "share" / an int
    (fixed: `determinism.enable` has set it and `update` changes nothing)."""

    def __init__(self, setting: int | str, device: torch.device, clock=None, busy=None, own=None):
        self.fixed = None if setting == "auto" else setting
        self.active = torch.device(device).type == "cpu"
        self.clock = clock or time.monotonic
        self.busy, self.own = busy or machine_busy_seconds, own or own_cpu_seconds
        self.share, self.cores = determinism.cpu_share(), os.cpu_count() or 1
        self.changes = 0
        self._mark = self._reading()

    def _reading(self) -> tuple[float, float | None, float]:
        return self.clock(), self.busy(), self.own()

    def update(self) -> int:
        """Re-decide the thread count from the load since the last decision; returns the count in use."""
        if not self.active or self.fixed is not None:
            return torch.get_num_threads()
        now = self._reading()
        wall = now[0] - self._mark[0]
        if wall < MIN_WINDOW_S or now[1] is None or self._mark[1] is None:
            return torch.get_num_threads()
        others = max(0.0, (now[1] - self._mark[1]) - (now[2] - self._mark[2])) / wall
        self._mark = now
        threads = threads_for_free_cores(self.cores, others, self.share)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes += 1
        return threads
