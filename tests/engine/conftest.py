"""Engine tests run the tiny model with one CPU thread: results do not depend on the thread count (the CPU
kernels are tested for that), and on the shared 2-core CI machine one thread is ~3x faster here."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
