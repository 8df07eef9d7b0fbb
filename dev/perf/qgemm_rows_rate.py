"""Experiment (2026-12-04): the CPU qgemm group-32 kernel on one thread with the weight in the caches, at 1, 2 and
4 rows of bf16 x (the kernel's MB = 1, 2 and, with VNNI and K <= 2048, 4 row variants), int4 and int8, 4096 x 1536.
Best of 9 runs of 30 calls; the figure for an instruction-level change to qgemm_g32.h. A/B against another build
by running it twice, once with GEMMA4_LIB_DIR naming that build's folder (dev/build.sh NAME quant):

    PYTHONPATH=.:python python dev/perf/qgemm_rows_rate.py LABEL [4,8]

Result (2-core AMD EPYC, AVX-512 VNNI; the 512-bit block-sum reduction, 7a9c3fa, after / before): int4 1 row
94-96 / 103-107 us, 2 rows 153-155 / 159-163, 4 rows 253-255 / 319-325; int8 unchanged (132-139 / 135-141 at 1 row).
"""
import sys
import time

import torch

import gemma4._native  # noqa: F401  (loads the operator library; GEMMA4_LIB_DIR picks a build)
from tests.quant.common import random_qweight

label = sys.argv[1] if len(sys.argv) > 1 else "build"
bits_list = tuple(int(b) for b in sys.argv[2].split(",")) if len(sys.argv) > 2 else (4, 8)
torch.set_num_threads(1)
torch.manual_seed(0)
N, K = 4096, 1536
for bits in bits_list:
    q, s = random_qweight(N, K, bits, 32, torch.bfloat16)
    for M in (1, 2, 4):
        x = torch.randn(M, K).bfloat16()
        for _ in range(5):
            torch.ops.gemma4.qgemm(x, q, s, None)
        best = float("inf")
        for _ in range(9):
            t = time.perf_counter()
            for _ in range(30):
                torch.ops.gemma4.qgemm(x, q, s, None)
            best = min(best, (time.perf_counter() - t) / 30)
        print(f"{label} int{bits} M={M}: {best * 1e6:.1f} us, {N * K * M / best / 1e9:.1f} GMAC/s", flush=True)
