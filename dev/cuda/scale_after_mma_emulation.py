"""The scale-after-MMA form of the 16-row int4 GEMV (dev/cuda/experiments/README.md, "The warpgroup MMA loop
measured", last bullet), emulated on the CPU in float32 to check its error before any kernel is written.

The form: a run's 32 weights enter the MMA as the bf16 levels 128 + u (u = q + 8 in 0..15, exact: a nibble OR-ed
into 0x4300's mantissa); the run's MMA sum starts from C = -136 sum(x) (fp32), so that it is sum(x q); one fp32
FMA an output adds scale * that sum into the accumulator; the output is rounded to x's dtype once.

Compared with float64 x @ dequant(W)^T, beside plain PyTorch's bf16 (x @ dequant(W).to(bf16)^T, fp32 sums) and
exact weights with fp32 sums: the max relative error (over the output's largest magnitude) before and after the
output's bf16 rounding. The MMA's own fp32 adder is not bit-exact here (torch's fp32 matmul sums in its own
order); what this checks is that the 128 x offsets cancel to well under bf16's error.

    python dev/cuda/scale_after_mma_emulation.py [--rows 16] [--n 512] [--k 5376] [--seed 0]
"""
import argparse

import torch

from gemma4.quant.formats import dequantize, levels, quantize_int4


def scale_after_mma(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x bf16 [M, K], q [N, K], s bf16 [N, R] -> fp32 [M, N] by the form above, before the output's rounding."""
    M, K = x.shape
    N, R = s.shape
    lv = (q.to(torch.int32) + 136).view(N, R, 32).to(torch.bfloat16)  # the levels 128 + u, exact (8 bits)
    xr = x.view(M, R, 32)
    c = -136 * xr.float().sum(-1)  # [M, R], fp32: the runs' C operands
    acc = torch.zeros(M, N)
    for r in range(R):  # one run: its MMAs from C, then one FMA an output by the row's scale
        run_sum = c[:, r:r + 1] + xr[:, r].float() @ lv[:, r].float().T  # [M, N]
        acc += run_sum * s[:, r].float()
    return acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--k", type=int, default=5376)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.rows, a.k, generator=g).to(torch.bfloat16)
    qweight, s = quantize_int4(torch.randn(a.n, a.k, generator=g) * 0.02, 32, torch.bfloat16)
    q, w = levels(qweight), dequantize(qweight, s, torch.float64)  # int8 [N, K] in -8..7; exact weights
    ref = x.double() @ w.T
    scale = ref.abs().max().item()
    cases = {
        "plain bf16 (dequant to bf16, fp32 sums)": x.float() @ w.to(torch.bfloat16).float().T,
        "scale after the MMA (this form)": scale_after_mma(x, q, s),
        "exact weights, fp32 sums": x.float() @ w.float().T,
    }
    for name, y in cases.items():
        before = (y.double() - ref).abs().max().item() / scale
        after = (y.to(torch.bfloat16).double() - ref).abs().max().item() / scale
        print(f"{name:42s} max rel error before the output's rounding {before:.2e}, after {after:.2e}")


if __name__ == "__main__":
    main()
