"""CPU qgemm decode GEMV (M = 1) compute rate: weights per second on a cache-resident matrix (L3) and a
streamed one (DRAM), one and two threads, bf16 activations (the int16 path) and fp32. Prints one line
per case; the cache-resident rate is the kernel's arithmetic ceiling, the streamed rate what decode sees.
    PYTHONPATH=. python dev/perf/qgemm_gemv_rate.py [--bits 4|8] [--group 32]"""
import argparse
import time

import torch

from gemma4 import ops
from tests.quant.common import random_qweight


def rate(n, k, bits, group, dtype, threads, reps):
    torch.set_num_threads(threads)
    qw, sc = random_qweight(n, k, bits, group, torch.bfloat16)
    x = torch.randn(1, k).to(dtype)
    for _ in range(3):
        ops.qgemm(x, qw, sc)
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(reps):
            torch.ops.gemma4.qgemm(x, qw, sc, None)
        best = min(best, (time.perf_counter() - t) / reps)
    nbytes = qw.numel() * qw.element_size() + sc.numel() * sc.element_size()
    return best, n * k / best / 1e9, nbytes / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=32)
    a = ap.parse_args()
    group = a.group or None
    for label, n, reps in (("L3 ", 4096, 20), ("DRAM", 49152, 3)):
        for dtype in (torch.bfloat16, torch.float32):
            for threads in (1, 2):
                t, gw, gb = rate(n, 1536, a.bits, group, dtype, threads, reps)
                print(f"{label} N={n} K=1536 int{a.bits} g{group} {str(dtype)[6:]:8s} {threads} thr: "
                      f"{t * 1e6:7.0f} us  {gw:5.1f} Gweights/s  {gb:5.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
