"""The ratio behind tests/ops/test_moe.py::test_experts_gradients_fp32's routing-weight check (ours against
float64 over plain float32 against float64, the norm over 256 draws) on one shape over many seeds, with the
entries' errors as they are ("raw") and divided by their condition scales (the test's, _weights_grad_scale).
    PYTHONPATH=.:python python dev/device_runs/moe_grad_ratio.py [seeds]"""
import sys

import numpy as np
import torch

import tests.ops.test_moe as T
from gemma4.ops import moe_experts

N, E, K, H, Im, act = 1, 4, 1, 16, 8, "gelu_tanh"
raw, scaled = [], []
for seed in list(range(int(sys.argv[1]) if len(sys.argv) > 1 else 200)) + [692584679]:
    torch.manual_seed(seed)
    res, sc = [[], [], []], []
    for _ in range(256):
        x, g = torch.randn(N, H), torch.randn(N, H)
        w, idx = T._routing(N, E, K)
        gu, dn = T._experts(E, H, Im, torch.float32)
        leaves = [t.clone().requires_grad_() for t in (x, w, gu, dn)]
        moe_experts(leaves[0], leaves[1], idx, leaves[2], leaves[3], act).backward(g)
        res[0].append(leaves[1].grad.flatten())
        res[1].append(T._ref_grads(x, w, idx, gu, dn, act, g)[1].flatten())
        res[2].append(T._ref_grads(x.double(), w.double(), idx, gu.double(), dn.double(), act, g.double())[1].flatten())
        sc.append(T._weights_grad_scale(x, idx, gu, dn, act, g).flatten())
    o, p, e = (torch.cat([t.double() for t in r]) for r in res)
    s = torch.cat(sc)
    raw.append(((o - e).norm() / (p - e).norm()).item())
    scaled.append((((o - e) / s).norm() / ((p - e) / s).norm()).item())
for name, r in (("raw", raw), ("scaled", scaled)):
    print(name, "percentiles 5/50/95/99/max:", np.percentile(r[:-1], [5, 50, 95, 99, 100]).round(3),
          "seed 692584679:", round(r[-1], 3))
