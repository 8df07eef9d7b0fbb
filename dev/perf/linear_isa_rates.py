"""gemma4::linear's prefill GEMM on each CPU instruction set against MKL's sgemm (torch.mm), fp32, M rows,
GFLOP/s, best of 5 after a warm-up: the AVX2 6 x 16 tile, the AVX-512 8 x 32 tile (where the CPU has it).
With --cold, each call takes the next of enough weight copies (over 1 GB) that its weight comes from DRAM, as in
a prefill, where every layer's weights are read once.
    python dev/perf/linear_isa_rates.py [--threads 2] [--m 128] [--cold]"""
import argparse
import itertools
import time

import torch

import gemma4.ops  # noqa: F401 (registers torch.ops.gemma4)
from gemma4.ops.linear import linear_cpu_isa

SHAPES = [(2048, 1536), (256, 1536), (6144, 1536), (12288, 1536), (1536, 2048), (1536, 6144), (1536, 12288)]


def best(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    isas = ["avx2"]
    try:
        linear_cpu_isa("avx512")
        isas.append("avx512")
    except RuntimeError:
        pass
    print(f"threads {a.threads}, M {a.m}, GFLOP/s: N x K  " + "  ".join(isas) + "  mkl")
    for n, k in SHAPES:
        copies = max(1, (1 << 30) // (4 * n * k)) if a.cold else 1
        x, ws = torch.randn(a.m, k), [torch.randn(n, k) for _ in range(copies)]
        w = itertools.cycle(ws).__next__  # each call the next copy
        flop = 2 * a.m * n * k / 1e9
        rates = []
        for isa in isas:
            linear_cpu_isa(isa)
            rates.append(flop / best(lambda: torch.ops.gemma4.linear(x, w(), None)))
        linear_cpu_isa("auto")
        rates.append(flop / best(lambda: torch.mm(x, w().t())))
        print(f"{n:6d} x {k:6d}  " + "  ".join(f"{r:7.1f}" for r in rates))


if __name__ == "__main__":
    main()
