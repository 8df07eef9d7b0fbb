"""Times gemma4::moe_experts_quant and its backward on CUDA on a 26B-A4B-shaped expert bank (E = 128, top-8,
H = 2816, Im = 704), bf16 x, against gemma4::moe_experts (and its backward) on the same weights as bf16 banks,
with the CUDA memory each call allocates at its peak. Above 128 tokens the quantized op runs the grouped
tensor-core GEMMs with the packed banks dequantized tile by tile (moe_tc_packed_b.cuh); below, the GEMVs (unless
the dev knob of dev/quant/moe_gemv_threshold.patch moves the threshold).

    PYTHONPATH=.:python python dev/quant/time_moe_packed_tc.py [--tokens 160,512] [--bits 4] [--group 32] [--reps 50]

Prints one line per token count: median ms (CUDA events) and peak MB of each call.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.gpu.common import cuda_time_ms
from gemma4.ops import reference

E, TOP_K, H, IM = 128, 8, 2816, 704


def bank(n, k, bits, group):
    g = k // (group or k)
    if bits == 4:
        q = torch.randint(0, 256, (E, n, k // 2), dtype=torch.uint8, device="cuda")
    else:
        q = torch.randint(-127, 128, (E, n, k), dtype=torch.int8, device="cuda")
    s = (torch.rand(E, n, g, device="cuda") * 0.02 + 0.001).to(torch.bfloat16)
    return q, s


def timed(fn, reps):
    """(median ms over reps calls, MB allocated at the peak of one call above what was allocated before it)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return cuda_time_ms(fn, reps), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="160,256,512,1024,2048")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--dense", action="store_true", help="also time moe_experts on bf16 banks")
    args = ap.parse_args()
    torch.manual_seed(0)
    group = args.group or None
    guq, gus = bank(2 * IM, H, args.bits, group)
    dnq, dns = bank(H, IM, args.bits, group)
    if args.dense:
        def deq(q, s):
            return torch.stack([reference.dequantize(q[e], s[e]).to(torch.bfloat16) for e in range(E)])
        gate_up, down = deq(guq, gus), deq(dnq, dns)
    print(f"{torch.cuda.get_device_name()}: E={E} top-{TOP_K} H={H} Im={IM} int{args.bits} "
          f"g{group or 'channel'}, bf16 x; median ms over {args.reps} calls, peak MB of one call")
    quant, quant_bwd = torch.ops.gemma4.moe_experts_quant, torch.ops.gemma4.moe_experts_quant_backward
    for n in map(int, args.tokens.split(",")):
        x = torch.randn(n, H, device="cuda").to(torch.bfloat16)
        g = torch.randn(n, H, device="cuda").to(torch.bfloat16)
        w = torch.rand(n, TOP_K, device="cuda")
        idx = torch.stack([torch.randperm(E)[:TOP_K] for _ in range(n)]).cuda()
        line = f"N={n:5d}"
        fwd = timed(lambda: quant(x, w, idx, guq, gus, dnq, dns, "gelu_tanh"), args.reps)
        bwd = timed(lambda: quant_bwd(g, x, w, idx, guq, gus, dnq, dns, "gelu_tanh"), args.reps)
        line += f" | quant fwd {fwd[0]:7.3f} ms {fwd[1]:7.1f} MB, bwd {bwd[0]:7.3f} ms {bwd[1]:7.1f} MB"
        if args.dense:
            same = torch.equal(quant(x, w, idx, guq, gus, dnq, dns, "gelu_tanh"),
                               torch.ops.gemma4.moe_experts(x, w, idx, gate_up, down, "gelu_tanh"))
            dfwd = timed(lambda: torch.ops.gemma4.moe_experts(x, w, idx, gate_up, down, "gelu_tanh"), args.reps)
            dbwd = timed(lambda: torch.ops.gemma4.moe_experts_backward(g, x, w, idx, gate_up, down, "gelu_tanh"),
                         args.reps)
            line += (f" | bf16 banks fwd {dfwd[0]:7.3f} ms {dfwd[1]:7.1f} MB, bwd (+weight grads) {dbwd[0]:7.3f} ms"
                     f" {dbwd[1]:7.1f} MB | fwd equal bit for bit: {same}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
