"""Runs test_qgemm_cuda_matches_reference for one parametrization over seeds 1..N in one process (what the
seed fixture of tests/conftest.py would do per run), printing each failure's assertion and seed: for a failure
seen once in a full suite run whose log did not come back.
    python dev/device_runs/flake_seeds.py PATH BITS GROUP K DTYPE SCALE_DTYPE N   (GROUP 0: per channel)"""
import sys
import traceback

import torch

from gemma4.ops import quant as qops
from tests.quant import test_qgemm_cuda as t

path, bits, group, k, dtype, sdtype, n = sys.argv[1:8]
group = int(group) or None
fails = 0
for seed in range(1, int(n) + 1):
    torch.manual_seed(seed)
    qops.qgemm_cuda_path(path)
    try:
        t.test_qgemm_cuda_matches_reference(path, int(bits), group, int(k), getattr(torch, dtype), getattr(torch, sdtype))
    except AssertionError:
        fails += 1
        print(f"seed {seed} failed:", traceback.format_exc().strip().splitlines()[-3:], flush=True)
print(f"failures: {fails} of {n} seeds")
