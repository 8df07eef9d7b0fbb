"""A few calls of gemma4::qgemm's tiled tensor-core GEMM (csrc/quant/qgemm_tc.cuh) on the 31B gate_up shape,
int4 g32, bf16 x of M rows (argv[1]), on the route argv[2] (default tiled; wgmma: qgemm_wgmma_sm90a.cu), for
Nsight Compute (dev/device_runs/qgemm_tc_ncu.sh):
    ncu --kernel-name regex:qgemm_tc_kernel --launch-skip 2 --launch-count 1 python3 dev/cuda/qgemm_tc_ncu.py 128
"""
import sys

import torch

from gemma4 import ops

ops.quant.qgemm_cuda_path(sys.argv[2] if len(sys.argv) > 2 else "tiled")
m, n, k = int(sys.argv[1]), 43008, 5376
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
q4 = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda")
s4 = (torch.rand(n, k // 32, device="cuda") * 0.02).to(torch.bfloat16)
for _ in range(4):
    ops.qgemm(x, q4, s4)
torch.cuda.synchronize()
