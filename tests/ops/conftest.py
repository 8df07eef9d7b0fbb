"""The `device` fixture: every op test runs once per backend this machine has.

cpu always; cuda when torch sees a GPU and the op library was built with CUDA. Each op test module
takes the fixture for all its tests (``pytestmark = pytest.mark.usefixtures("device")``) and names
the operators it calls in ``OPS``; on a backend where one of them has no kernel, the test is skipped
(so a CUDA build with some kernels still missing runs the rest). While a test runs, the backend is
torch's default device, so the tests' factory calls (randn, ones, tensor, ...) create their inputs
there and the same test code checks the CUDA kernel against the reference as it checks the CPU one.
"""
import pytest
import torch

from tests.helpers import BACKENDS, has_kernel


@pytest.fixture(params=BACKENDS)
def device(request):
    dev = torch.device(request.param)
    missing = [op for op in getattr(request.module, "OPS", ()) if not has_kernel(op, dev)]
    if missing:
        pytest.skip(f"no {dev.type} kernel for gemma4::{', '.join(missing)}")
    with dev:
        yield dev
