"""The LoRA tests run tiny models (H=64): one thread each. Splitting such small matrices over threads only
adds synchronisation, which costs 10x when the machine is shared and oversubscribed."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
