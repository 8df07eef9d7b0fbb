"""int8 / int4 g32 GEMV (one row of x, bf16) on E2B's short-row and long-row shapes of equal bytes, weights rotated
past L3: whether a long row (x 24 KB of int16 at K = 12288) streams as fast as a short one. The fifteenth session's
question: prefetching the weights into L1 pushed x out of it on long rows (docs/quantization.md, "Prefetching into
L2"). Compare builds by running this with each on GEMMA4_LIB_DIR (a folder with _C*.so and libgemma4_ops.so),
alternating.

    python dev/perf/qgemv_long_rows.py [--bits 8] [--group 32] [--threads 2] [--calls 80]   # --group 0: per channel
"""
import argparse
import time

import torch

import gemma4.ops  # noqa: F401  (the operators)
from gemma4.quant.formats import quantize_int4, quantize_int8, tile16

SHAPES = [(1536, 12288), (1536, 6144), (12288, 1536)]  # down (wide), down, up: N x K


def weights(bits, group, n, k, copies):
    """`copies` random weights as the model holds them: int4 g32 in the 16-row tiles, the rest in rows."""
    out = []
    for i in range(copies):
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(i))
        if bits == 8:
            out.append(quantize_int8(w, group, torch.bfloat16))
        elif group == 32:
            out.append(tile16(*quantize_int4(w, 32, torch.bfloat16)))
        else:
            out.append(quantize_int4(w, group, torch.bfloat16))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, choices=[4, 8], default=8)
    ap.add_argument("--group", type=int, choices=[0, 32, 64, 128], default=32, help="0: one scale per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=80)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for n, k in SHAPES:
        copies = max(2, int(250e6 // (n * k * a.bits // 8)))  # 250 MB of weights: past the L3
        group = a.group or None
        if group is None and a.bits == 4:
            raise SystemExit("int4 needs groups")
        ws = weights(a.bits, group, n, k, copies)
        x = torch.randn(1, k, dtype=torch.bfloat16)
        nbytes = sum(t.numel() * t.element_size() for t in ws[0])
        times = []
        for i in range(a.calls):
            q, s = ws[i % copies]
            t = time.perf_counter()
            torch.ops.gemma4.qgemm(x, q, s, None)
            times.append(time.perf_counter() - t)
        med = sorted(times)[len(times) // 2]
        print(f"int{a.bits} group {a.group or 'row'} {n} x {k}: {med * 1e6:.0f} us a call (median of {a.calls}), {nbytes / med / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
