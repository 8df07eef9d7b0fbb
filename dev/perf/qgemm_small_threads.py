"""Experiment (2026-12-04): one thread or all for qgemm's small decode shapes (one row of x, weights from DRAM).

E2B's k/v projections and PLE gate (256 or 512 x 1536) and PLE projection (1536 x 256) are ~94 of a token's
~277 qgemm calls; at 2 threads the fork/join costs a few µs against ~10 µs of work. For each shape and bit width,
times the call over copies of the weight filling 256 MB at 1 and at 2 threads, alternating, best of rounds.

    PYTHONPATH=.:python python dev/perf/qgemm_small_threads.py

Result (this 2-core AMD EPYC, 2026-12-04): two threads win at every shape, so qgemm keeps both. 2 threads / 1
thread: int4 256x1536 12.4 / 14.3 µs, 1536x256 11.7 / 14.7, 512x1536 15.7 / 20.5; int8 256x1536 15.0 / 17.2,
1536x256 15.2 / 16.3; larger shapes 0.63-0.77x. (Measured with the weight in cache, one thread had looked
faster at 256x1536, 9.3 against 10.7 µs: in decode the weight comes from DRAM, and two cores stream it faster.)
"""
import time

import torch

from gemma4 import ops
from tests.quant.common import random_qweight

SHAPES = [(256, 1536), (512, 1536), (768, 1536), (1024, 1536), (1536, 256), (1536, 512), (2048, 1536)]


def per_call(x, weights, threads, reps):
    torch.set_num_threads(threads)
    for q, s in weights:
        ops.qgemm(x, q, s)
    t = time.perf_counter()
    for _ in range(reps):
        for q, s in weights:
            ops.qgemm(x, q, s)
    return (time.perf_counter() - t) / (reps * len(weights))


for bits in (4, 8):
    for n, k in SHAPES:
        size = n * k * (bits / 8 + 2 / 32)
        copies = max(1, int(256e6 // size))
        weights = [random_qweight(n, k, bits, 32, torch.bfloat16) for _ in range(copies)]
        x = torch.randn(1, k).bfloat16()
        reps = max(3, 400 // copies)
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(3):
            for th in (1, 2):
                best[th] = min(best[th], per_call(x, weights, th, reps))
        print(f"int{bits} {n}x{k} ({size / 1e3:.0f} KB): 1 thread {best[1] * 1e6:.1f} us, "
              f"2 threads {best[2] * 1e6:.1f} us, ratio {best[2] / best[1]:.2f}", flush=True)
