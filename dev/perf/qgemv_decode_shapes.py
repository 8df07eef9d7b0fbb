"""Experiment (2026-12-04): the CPU qgemm at one row of x on every E2B decode shape, weights from DRAM.

Each shape runs over copies of its weight filling 256 MB (past this EPYC's 32 MB L3: with 64 MB the L3 still
caught part of it and the total came out ~15% faster than inside a decode step), times the calls a token makes;
prints per-shape GB/s and the token's total. Used to pick qgemm_g32.h's kPrefetchAhead.

    PYTHONPATH=.:python python dev/perf/qgemv_decode_shapes.py [int4|int8]
"""
import sys
import time

import torch

from gemma4 import ops
from tests.quant.common import random_qweight

bits = 8 if sys.argv[1:] == ["int8"] else 4
bytes_per_weight = (bits / 8) + 2 / 32  # packed weights + one bf16 scale per 32
torch.set_num_threads(2)
# (N, K): calls per token of E2B with its head quantized
shapes = {(1536, 6144): 15, (1536, 12288): 20, (6144, 1536): 30, (12288, 1536): 40, (256, 1536): 59,
          (512, 1536): 6, (1536, 2048): 28, (1536, 4096): 7, (1536, 256): 35, (2048, 1536): 28, (4096, 1536): 7,
          (262144, 1536): 1}
total_s = total_b = 0.0
for (n, k), calls in shapes.items():
    size = n * k * bytes_per_weight
    copies = max(1, int(256e6 // size))
    weights = [random_qweight(n, k, bits, 32, torch.bfloat16) for _ in range(copies)]
    x = torch.randn(1, k).bfloat16()
    for q, s in weights:
        ops.qgemm(x, q, s)
    reps = max(3, 200 // copies)
    t = time.perf_counter()
    for _ in range(reps):
        for q, s in weights:
            ops.qgemm(x, q, s)
    dt = (time.perf_counter() - t) / (reps * copies)
    total_s += dt * calls
    total_b += size * calls
    print(f"{n}x{k} x{calls}: {dt * 1e6:.1f} us, {size / dt / 1e9:.1f} GB/s, per token {dt * calls * 1e3:.2f} ms")
print(f"total {total_s * 1e3:.1f} ms for {total_b / 1e9:.3f} GB: {total_b / total_s / 1e9:.1f} GB/s")
