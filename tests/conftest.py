"""Each test runs on fresh random inputs: a new seed per test, reported when the test fails."""
import os
import random

import pytest
import torch

torch.set_num_threads(int(os.environ.get("GEMMA4_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = int(os.environ.get("GEMMA4_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    yield
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"\n[seed] rerun with GEMMA4_TEST_SEED={seed}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
