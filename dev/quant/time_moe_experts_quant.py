"""Times one decode step (and a short prefill) of a 26B-A4B-shaped quantized MoE expert bank on this CPU:
QuantExperts.forward (whatever it calls) against the per-expert Python loop it replaced (kept here).

    python dev/quant/time_moe_experts_quant.py [--threads 2] [--tokens 1,16] [--bits 4] [--group 32] [--device cuda]

E = 128 experts, top-8, H = 2816, Im = 704 (gemma-4-26B-A4B); random packed weights, bf16 activations,
fp32 routing weights. Prints the median and minimum of repeated calls and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gemma4 import ops
from gemma4.quant import QuantExperts

E, TOP_K, H, IM = 128, 8, 2816, 704


def old_loop(m: QuantExperts, x, weights, indices):
    """QuantExperts.forward before gemma4::moe_experts_quant: a Python loop over the chosen experts."""
    im, top_k = m.moe_intermediate_size, indices.shape[1]
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=m.num_experts).tolist()
    w_flat = weights.reshape(-1)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    start = 0
    for e, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]
        start += count
        token = pairs // top_k
        gate_up = ops.qgemm(x[token], m.gate_up_proj_qweight[e], m.gate_up_proj_scales[e])
        hidden = ops.gated_activation(gate_up[:, :im], gate_up[:, im:], m.activation)
        y = ops.qgemm(hidden, m.down_proj_qweight[e], m.down_proj_scales[e])
        out.index_add_(0, token, y.float() * w_flat[pairs].float()[:, None])
    return out.to(x.dtype)


def bench(fn, reps, sync=lambda: None):
    fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", default="1,16")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    group = args.group or None
    m = QuantExperts(H, E, IM, "gelu_tanh", args.bits, group, torch.bfloat16)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            q = getattr(m, f"{name}_qweight")
            if args.bits == 4:
                q.copy_(torch.randint(0, 256, q.shape, dtype=torch.uint8))
            else:
                q.copy_(torch.randint(-127, 128, q.shape, dtype=torch.int8))
            s = getattr(m, f"{name}_scales")
            s.copy_(torch.rand(s.shape) * 0.02 + 0.001)
    has_op = hasattr(torch.ops.gemma4, "moe_experts_quant")
    m = m.to(dev)
    print(f"26B-A4B experts: E={E} top-{TOP_K} H={H} Im={IM} int{args.bits} g{group or 'channel'}, {dev}, "
          f"{args.threads} threads, moe_experts_quant op: {has_op}, load average {os.getloadavg()}")
    for n in map(int, args.tokens.split(",")):
        x = torch.randn(n, H).to(torch.bfloat16).to(dev)
        weights = torch.rand(n, TOP_K).to(dev)
        indices = torch.stack([torch.randperm(E)[:TOP_K] for _ in range(n)]).to(dev)
        with torch.no_grad():
            new = m(x, weights, indices)
            old = old_loop(m, x, weights, indices)
            same = torch.equal(new, old)
            t_new = bench(lambda: m(x, weights, indices), args.reps, sync)
            t_old = bench(lambda: old_loop(m, x, weights, indices), args.reps, sync)
        print(f"N={n:4d}: QuantExperts.forward {t_new[0]:8.3f} ms (min {t_new[1]:.3f}), "
              f"old loop {t_old[0]:8.3f} ms (min {t_old[1]:.3f}), equal bit for bit: {same}"
              + ("" if same else f" (max diff {(new.float() - old.float()).abs().max().item():.3g})"))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
