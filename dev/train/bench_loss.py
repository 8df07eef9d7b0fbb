"""Loss-only timing: fused linear cross-entropy (modeling/loss.py) vs the plain computation (transformers'
way) vs the previous chunked loss that recomputed the head in backward. Forward + backward of the loss,
hidden requires grad, the head frozen (LoRA training). Prints wall and process CPU time (min of N): on a
shared machine CPU time is the steadier number.

    python dev/train/bench_loss.py --tokens 256 --dtype float32 --chunks 128,256,512 --threads 1
"""
import argparse
import time

import torch
from torch.nn import functional as F

from gemma4.modeling import loss as L


def plain(hidden, weight, labels, cap):
    logits = hidden @ weight.t()
    logits = torch.tanh(logits / cap) * cap
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=-100)


def timed(fn, reps):
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--chunks", default="256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    H, V = 1536, 262144
    weight = (torch.randn(V, H) * 0.02).to(dtype)
    hidden = torch.randn(1, args.tokens, H).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (1, args.tokens))

    def run(f):
        def go():
            f().backward()
            hidden.grad = None
        return go

    if args.plain:
        w, c = timed(run(lambda: plain(hidden, weight, labels, 30.0)), args.reps)
        print(f"plain            wall {w:6.2f} s  cpu {c:6.2f} s")
    for chunk in [int(x) for x in args.chunks.split(",")]:
        w, c = timed(run(lambda: L.chunked_causal_lm_loss(hidden, weight, labels, 30.0, chunk)), args.reps)
        print(f"fused chunk {chunk:4d} wall {w:6.2f} s  cpu {c:6.2f} s", flush=True)


if __name__ == "__main__":
    main()
