"""One LoRA Linear, forward + backward (frozen base, r=16, no dropout): ours (gemma4.lora.layers.LoraLinear)
against PEFT 0.21's lora.Linear around the same nn.Linear. Process CPU time, min of N, 1 thread by default
(steady on a shared machine).

    python dev/train/bench_lora_linear.py --dtype bfloat16 --tokens 256 --in 1536 --out 6144
"""
import argparse
import copy
import time
import warnings

import torch
from torch import nn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--in", dest="fin", type=int, default=1536)
    ap.add_argument("--out", type=int, default=6144)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    from gemma4.lora.layers import LoraLinear  # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig as PeftConfig  # noqa: PLC0415
        from peft.tuners.lora import Linear as PeftLinear  # noqa: PLC0415

    base = nn.Linear(args.fin, args.out, bias=False).to(dtype).requires_grad_(False)
    ours = LoraLinear(copy.deepcopy(base))
    ours.update_layer("default", 16, 32.0, False, 0.0, torch.float32, init=False)
    ours.active_adapters = ["default"]
    config = PeftConfig(r=16, lora_alpha=32, lora_dropout=0.0)
    theirs = PeftLinear(copy.deepcopy(base), "default", config, r=16, lora_alpha=32, lora_dropout=0.0)
    with torch.no_grad():
        for name in ("lora_A", "lora_B"):
            getattr(theirs, name)["default"].weight.copy_(getattr(ours, name)["default"].weight)
    x = torch.randn(1, args.tokens, args.fin).to(dtype).requires_grad_()
    g = torch.randn(1, args.tokens, args.out).to(dtype)
    for label, layer in (("ours", ours), ("peft", theirs)):
        best = 1e9
        for _ in range(args.reps):
            c0 = time.process_time()
            y = layer(x)
            y.backward(g)
            best = min(best, time.process_time() - c0)
            x.grad = None
            layer.zero_grad(set_to_none=True)
        gflop = 2 * 2 * args.tokens * args.fin * args.out / 1e9  # base forward + input gradient
        print(f"{label:5s} {args.dtype} N={args.tokens} {args.fin}->{args.out}: {best * 1e3:8.1f} ms CPU "
              f"({gflop / best:5.1f} GFLOP/s of base GEMMs)", flush=True)


if __name__ == "__main__":
    main()
