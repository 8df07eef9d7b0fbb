"""Times gemma4::moe_experts_quant_backward on a 26B-A4B-shaped int4 bank (E = 128, top 8, H = 2816, Im = 704,
groups of 32, bf16 x) on the GPU, against the float reference's autograd (what eager PyTorch does for
transformers' experts: dequantize each chosen expert, multiply, differentiate). Run it under two builds
(GEMMA4_LIB_DIR) for a before / after; prints one JSON line per token count.

    GEMMA4_LIB_DIR=build/x python dev/quant/time_moe_quant_backward.py [--tokens 8,64,512] [--label new]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from gemma4 import ops
from gemma4.ops import reference

E, TOP_K, H, IM = 128, 8, 2816, 704


def gpu_ms(fn, reps: int) -> float:
    """Median wall time per call in ms, the GPU synchronised before and after each (a host loop syncs anyway)."""
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="8,64,512")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--label", default="")
    ap.add_argument("--reference", action="store_true", help="also time the reference's autograd")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    banks = (torch.randint(0, 256, (E, 2 * IM, H // 2), dtype=torch.uint8, device=dev),
             (torch.rand(E, 2 * IM, H // 32, device=dev) * 0.02 + 0.001).bfloat16(),
             torch.randint(0, 256, (E, H, IM // 2), dtype=torch.uint8, device=dev),
             (torch.rand(E, H, IM // 32, device=dev) * 0.02 + 0.001).bfloat16())
    for n in map(int, args.tokens.split(",")):
        x = torch.randn(n, H, device=dev).bfloat16()
        grad = torch.randn(n, H, device=dev).bfloat16()
        w, idx = ops.moe_route(torch.randn(n, E, device=dev), torch.ones(E, device=dev), TOP_K)
        row = {"label": args.label, "tokens": n,
               "ours_ms": gpu_ms(lambda: torch.ops.gemma4.moe_experts_quant_backward(grad, x, w, idx, *banks,
                                                                                    "gelu_tanh"), args.reps)}
        if args.reference:
            def ref():
                xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
                return torch.autograd.grad(reference.moe_experts_quant(xr, wr, idx, *banks, "gelu_tanh"), (xr, wr),
                                           grad)
            row["reference_autograd_ms"] = gpu_ms(ref, max(2, args.reps // 3))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
