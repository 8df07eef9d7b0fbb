"""Experiment (2026-12-06): gemma4::linear at one row of x over E2B's decode projections in the order a token runs
them (35 layers x q, k, v, o, gate, up, down, PLE gate, PLE projection: 315 calls, 3.75 GB of bf16), weights from
DRAM, beside a plain 2-thread sum over as many bytes: what share of the machine's read rate the decode GEMV gets.

On the twentieth session's 2-core Intel Xeon (AVX-512, AMX) one weight row at a time (prefetched 8 KB ahead into
L1: the walk tuned on the AVX512-BF16 EPYC) streamed bf16 at 20.0-20.3 GB/s against 30-31 for the sum; 4 rows side
by side prefetched two tiles ahead into L2 25.1-25.8 (fp32 25.5 -> 28.0). linear_gemv_avx512.cpp's
one_row_stream() keeps the one-row walk for AMD CPUs only.

The quantized modes run gemma4::qgemm on the layouts QuantLinear keeps on the CPU (int8 [N, K] with bf16 scales
per 32; int4 tiled by formats.tile16), bf16 x.

    PYTHONPATH=.:python python dev/perf/gemv_sequence_rates.py [bfloat16|float32|int8|int4]
"""
import sys
import time

import torch

from gemma4 import ops
from gemma4.quant import formats
from tests.quant.common import random_qweight

H = 1536


def layer_shapes(full: bool, wide: bool):
    q, mlp = (4096 if full else 2048), (12288 if wide else 6144)
    return [(q, H), (256, H), (256, H), (H, q), (mlp, H), (mlp, H), (H, mlp), (256, H), (H, 256)]


def quantized(n: int, k: int, bits: int):
    q, s = random_qweight(n, k, bits, 32, torch.bfloat16)
    return formats.tile16(q, s) if bits == 4 else (q, s)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
    bits = {"int8": 8, "int4": 4}.get(mode)
    dtype = torch.bfloat16 if bits else getattr(torch, mode)
    torch.set_num_threads(2)
    shapes = [s for i in range(35) for s in layer_shapes(full=i % 5 == 4, wide=i >= 15)]
    if bits:
        weights = [quantized(n, k, bits) for n, k in shapes]  # (qweight, scales) each
        total = sum(t.numel() * t.element_size() for w in weights for t in w)
        call = lambda x, w: ops.qgemm(x, *w)
    else:
        weights = [(torch.rand(n, k) - 0.5).to(dtype) for n, k in shapes]  # [N, K] each
        total = sum(w.numel() * w.element_size() for w in weights)
        call = ops.linear
    xs = {k: torch.randn(1, k).to(dtype) for k in {k for _, k in shapes}}  # [1, K]
    plain = torch.rand(total // 4)  # as many bytes in fp32

    for _ in range(4):
        t = time.perf_counter()
        for (n, k), w in zip(shapes, weights):
            call(xs[k], w)
        gemv_s = time.perf_counter() - t
        t = time.perf_counter()
        plain.sum()
        sum_s = time.perf_counter() - t
        print(f"{ops.linear_cpu_isa()} {mode}: GEMVs {gemv_s * 1e3:.1f} ms, {total / gemv_s / 1e9:.1f} GB/s; "
              f"sum {total / sum_s / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
