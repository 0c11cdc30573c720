"""trainer.num_threads: 'auto' follows the cores other programs leave free; 'share' or N stays put."""
import pytest
import torch

from onpolicy.config import ConfigError, parse_args
from onpolicy.trainer import cpu_threads
from onpolicy.trainer.cpu_threads import CpuThreads, machine_busy_seconds, threads_for_free_cores


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_for_free_cores():
    assert threads_for_free_cores(2, 0.0, 2) == 2
    assert threads_for_free_cores(2, 0.4, 2) == 2
    assert threads_for_free_cores(2, 0.67, 2) == 1  # a busy loop squeezed by our 2 spinning threads
    assert threads_for_free_cores(2, 1.0, 2) == 1
    assert threads_for_free_cores(2, 5.0, 2) == 1  # never below 1
    assert threads_for_free_cores(8, 0.0, 4) == 4  # never above this process's share


class FakeMachine:
    """A clock, the machine's busy seconds and ours: `others` cores busy elsewhere per second."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def advance(self, seconds, others, ours=1.0):
        self.t += seconds
        self.busy += seconds * (others + ours)
        self.own += seconds * ours


def _threads(setting, machine, device="cpu", monkeypatch=None):
    monkeypatch.setattr("onpolicy.determinism.cpu_share", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    return CpuThreads(setting, torch.device(device), clock=lambda: machine.t, busy=lambda: machine.busy,
                      own=lambda: machine.own)


def test_auto_follows_the_load(monkeypatch):
    m = FakeMachine()
    torch.set_num_threads(2)
    th = _threads("auto", m, monkeypatch=monkeypatch)
    m.advance(1.0, others=1.0)
    assert th.update() == 1 and torch.get_num_threads() == 1
    m.advance(0.1, others=0.0)
    assert th.update() == 1  # under MIN_WINDOW_S: no decision yet
    m.advance(1.0, others=0.0)
    assert th.update() == 2 and torch.get_num_threads() == 2 and th.changes == 2


def test_fixed_count_and_gpu_runs_are_left_alone(monkeypatch):
    m = FakeMachine()
    torch.set_num_threads(2)
    for th in (_threads(2, m, monkeypatch=monkeypatch), _threads("share", m, monkeypatch=monkeypatch),
               _threads("auto", m, "cuda", monkeypatch=monkeypatch)):
        m.advance(1.0, others=2.0)
        assert th.update() == 2 and torch.get_num_threads() == 2 and th.changes == 0


def test_reads_this_machine():
    busy = machine_busy_seconds()
    assert busy is None or busy > 0
    monkey = CpuThreads("auto", torch.device("cpu"))
    assert 1 <= monkey.update() <= cpu_threads.determinism.cpu_share()


def test_config_field():
    assert parse_args([]).trainer.num_threads == "auto"
    assert parse_args(["--trainer.num_threads", "auto"]).trainer.num_threads == "auto"
    assert parse_args(["--trainer.num_threads", "3"]).trainer.num_threads == 3
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match=r"trainer\.num_threads: got .*; allowed: 'share', 'auto' or an int >= 1"):
            parse_args(["--trainer.num_threads", bad])
