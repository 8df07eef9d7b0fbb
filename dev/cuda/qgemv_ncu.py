"""A few M=1 (or M=$M) calls of gemma4::qgemm on the 31B gate_up shape (SHAPE=down: 31B down) (int4 g32, int8 per-channel), for Nsight
Compute:  ncu --kernel-name regex:qgemv_kernel --launch-skip 2 --launch-count 2 --clock-control none \
              --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
              python3 dev/cuda/qgemv_ncu.py
"""
import os

import torch

from gemma4 import ops
from gemma4.ops import quant

if os.environ.get("VPATH"):  # force a GEMV route (gemma4.ops.quant.qgemm_cuda_path), e.g. bulk
    quant.qgemm_cuda_path(os.environ["VPATH"])

# SHAPE=down: the 31B down shape (long rows) instead of gate_up (short rows, many of them)
n, k = (5376, 21504) if os.environ.get("SHAPE") == "down" else (43008, 5376)
x = torch.randn(int(os.environ.get("M", "1")), k, device="cuda", dtype=torch.bfloat16)  # M: rows of x
q4 = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda")
s4 = (torch.rand(n, k // 32, device="cuda") * 0.02).to(torch.bfloat16)
q8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
s8 = (torch.rand(n, 1, device="cuda") * 0.002).to(torch.bfloat16)
for _ in range(4):
    ops.qgemm(x, q4, s4)
for _ in range(4):
    ops.qgemm(x, q8, s8)
torch.cuda.synchronize()
