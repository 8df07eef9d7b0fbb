"""CPU check of the int16-activation GEMV's arithmetic (csrc/quant/qgemv_x16.cuh): emulates in numpy the x
quantization of qgemv_x16_prep_kernel (per 32 activations, scale = amax / 32767, round half to even, offset
-8 x sum for int4) and run_dot's masks and dp2a sums (int4: low nibbles and high nibbles at 16x, shifted once;
int8: signed bytes), with the per-run fp32 scaling, and compares with float64 x @ dequant(W)^T. It was run
before the kernel's first device call. Runs without a GPU:  PYTHONPATH=.:python python dev/cuda/qgemv_x16_emul.py
"""
import numpy as np
import torch

from gemma4.ops import reference
from tests.quant.common import random_qweight


def dp2a(xw: np.ndarray, b: np.ndarray, signed_b: bool) -> int:
    """Sum of int16 x times bytes of b (two pairs per 32-bit word: what dp2a.lo + dp2a.hi add)."""
    bb = b.astype(np.int8).astype(np.int64) if signed_b else b.astype(np.int64)
    return int((xw.astype(np.int64) * bb).sum())


def x16_gemv(x: np.ndarray, qw: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """y [N] for one row x [K] as the kernel computes it (fp32 per-run scaling, lane order ignored)."""
    n, k = qw.shape[0], x.shape[0]
    runs, group = k // 32, k // scales.shape[1]
    y = np.zeros(n, np.float32)
    for r in range(runs):
        v = x[32 * r:32 * r + 32].astype(np.float32)
        s = np.float32(np.abs(v).max() / np.float32(32767))
        inv = np.float32(1) / s if s > 0 else np.float32(0)
        x16 = np.clip(np.rint(v * inv), -32767, 32767).astype(np.int64)
        offset = -8 * int(x16.sum()) if bits == 4 else 0
        for row in range(n):
            run = qw[row, r * 4 * bits:(r + 1) * 4 * bits]
            if bits == 4:
                lo = offset + dp2a(x16[:16], run & 0x0F, False)
                hi = dp2a(x16[16:], run & 0xF0, False)  # 16x the high nibbles' sum
                total = lo + (hi >> 4)
            else:
                total = dp2a(x16, run, True)
            ws = np.float32(scales[row, (32 * r) // group])
            y[row] = np.float32(y[row] + np.float32(total) * np.float32(s * ws))
    return y


def main() -> None:
    torch.manual_seed(0)
    for bits, group in [(4, 32), (4, 128), (4, None), (8, None), (8, 32)]:
        n, k = 6, 256
        qweight, scales = random_qweight(n, k, bits, group, torch.bfloat16)
        x = torch.randn(k).to(torch.bfloat16)
        ours = x16_gemv(x.float().numpy(), qweight.numpy().view(np.uint8), scales.float().numpy(), bits)
        ref = (x.double() @ reference.dequantize(qweight, scales, torch.float64).t()).numpy()
        err, top = np.abs(ours - ref).max(), np.abs(ref).max()
        print(f"bits {bits} group {group}: max |ours - float64| {err:.2e} of outputs up to {top:.2f}")
        assert err < 1e-3 * top, "the emulated kernel disagrees with x @ dequant(W)^T"


if __name__ == "__main__":
    main()
