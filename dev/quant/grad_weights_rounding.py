"""Why gemma4::moe_experts_quant_backward computes the routing weights' gradients in float32 from the exact
weights (moe_experts_quant_composed.cpp). One-token problems of tests/quant/test_moe_experts_quant.py's
CUDA case (4 experts, H 2112, Im 704, top 2, bf16 x): grad_weights[k] = <grad_out, y_k> under several roundings,
each one's largest error against the float64 reference divided by plain bf16 PyTorch's (the error rule allows 2).

  python dev/quant/grad_weights_rounding.py [--format int8-channel|int4-g32] [--problems 60]

Measured 2026-12-05 (60 problems each format): rounding the weights to bf16 (as the dequantized bf16 banks do) or
h (as the forward does) exceeded 2x on 3-6 of 60 problems (medians 0.5-0.6, largest 3.3-8.7), and so did the op
before the change, which used the forward's y rounded to bf16 (3-5 of 60, largest 6-12); float32 throughout from
the exact weights, and the op now, stayed under 0.005.
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "python")]
from gemma4.ops import reference  # noqa: E402
from tests.helpers import max_abs_err  # noqa: E402
from tests.quant.test_moe_experts_quant import _plain, _problem  # noqa: E402

FORMATS = {"int8-channel": (8, None), "int4-g32": (4, 32)}


def grad_weights(x, g, idx, banks, weight_dtype, round_h):
    """grad_weights [N, K] = <g[n], h @ D^T> in float64 after the chosen roundings: the weights rounded to
    weight_dtype, and h (from g and u rounded to bf16) rounded to bf16 when round_h."""
    guq, gus, dnq, dns = banks
    out = torch.zeros(idx.shape, dtype=torch.float64)
    for n in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = idx[n, k].item()
            G = reference.dequantize(guq[e], gus[e]).to(weight_dtype).double()  # [2Im, H]
            D = reference.dequantize(dnq[e], dns[e]).to(weight_dtype).double()  # [H, Im]
            gate, up = (x[n].double() @ G.T).chunk(2)
            if round_h:
                gate, up = gate.bfloat16().double(), up.bfloat16().double()
            h = F.gelu(gate, approximate="tanh") * up
            if round_h:
                h = h.bfloat16().double()
            out[n, k] = (g[n].double() @ D) @ h
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="int8-channel", choices=sorted(FORMATS))
    ap.add_argument("--problems", type=int, default=60)
    args = ap.parse_args()
    variants = {"weights bf16": (torch.bfloat16, False), "h bf16": (torch.float32, True),
                "float32, exact weights": (torch.float32, False)}
    ratios = {name: [] for name in [*variants, "the op"]}
    for seed in range(args.problems):
        torch.manual_seed(seed)
        x, w, idx, *banks = _problem(4, 2112, 704, *FORMATS[args.format], 1, 2, torch.bfloat16, unused=(1,))
        g = torch.randn(x.shape).to(torch.bfloat16)
        x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
        exact = torch.autograd.grad(reference.moe_experts_quant(x64, w64, idx, *banks, "gelu_tanh"), w64, g.double())[0]
        wp = w.clone().requires_grad_()
        plain_err = max_abs_err(torch.autograd.grad(_plain(x, wp, idx, *banks, "gelu_tanh"), wp, g)[0], exact)
        for name, (wdt, rh) in variants.items():
            ratios[name].append(max_abs_err(grad_weights(x, g, idx, banks, wdt, rh), exact) / plain_err)
        ours = torch.ops.gemma4.moe_experts_quant_backward(g, x, w, idx, *banks, "gelu_tanh")[1]
        ratios["the op"].append(max_abs_err(ours, exact) / plain_err)
    for name, r in ratios.items():
        print(f"{name:24s} median {statistics.median(r):.3f}  max {max(r):.3f}  over 2x: {sum(v > 2 for v in r)}"
              f"/{len(r)}")


if __name__ == "__main__":
    main()
