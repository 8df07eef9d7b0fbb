"""Host time of one LoRA Linear's forward + backward: a bf16 base with float32 adapters (the gemma4::lora_*
path) at a size where the kernels cost next to nothing, against PEFT's LoRA layer on the same shapes.
What it measures is the per-call overhead that a GPU step pays on its host thread (docs/training.md).

    python dev/train/bench_lora_host_time.py [--profile]
"""
import argparse
import cProfile
import pstats
import time

import peft
import torch
from torch import nn

from gemma4.lora.layers import LoraLinear
from gemma4.modeling.linear import Linear


def per_call_us(step, reps=2000):
    for _ in range(200):
        step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - t0) / reps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true", help="print a cProfile of ours")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)  # [N, in]

    ours = LoraLinear(Linear(64, 64, bias=False).to(torch.bfloat16).requires_grad_(False))
    ours.update_layer("default", 16, 32, False, 0.0, torch.float32)
    ours.active_adapters = ["default"]
    theirs = peft.get_peft_model(nn.Sequential(nn.Linear(64, 64, bias=False)).to(torch.bfloat16),
                                 peft.LoraConfig(r=16, lora_alpha=32, target_modules=["0"]))

    def step(layer):
        y = layer(x)  # [N, out] bf16
        y.backward(torch.ones_like(y))

    print(f"ours: {per_call_us(lambda: step(ours)):.1f} us   PEFT: {per_call_us(lambda: step(theirs)):.1f} us")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [step(ours) for _ in range(2000)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
