import pytest
import torch


@pytest.fixture
def cpu_one_thread(monkeypatch):
    """The trial's loop on the CPU (``get_device`` without importing ray.train) with one torch thread, restored
    after: in-process loop tests, side by side with Ray's workers on a 2-core machine."""
    from trainables import trial
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
