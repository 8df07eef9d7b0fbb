"""Times gemma4::qgemm (int4 g32, bf16 x and scales) of the build GEMMA4_LIB_DIR points at on the shapes and rows
given, with the route given (dev/device_runs/resident_select.sh runs it per build and route). Same timer as
benchmarks/gpu/bench_qgemm_gpu.py, on the shapes only (no baselines: quicker than dev/cuda/qgemv_variants.py), and
the relative error of each output against float64 x @ dequant(W)^T, so that a build that computes something else
shows.

    PROBE_SHAPES="31B gate_up:43008:5376" PROBE_M=1,8,16 python dev/cuda/resident_probe.py NAME resident OUT.json
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bench_qgemm_gpu import copies_for  # noqa: E402
from benchmarks.gpu.common import graph_time_ms  # noqa: E402


def int4_weight_copies(n: int, k: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Random int4 g32 weights [n, k] with bf16 scales on the GPU, as many copies as the benchmark's timer cycles
    through (copies_for: 2-16 copies, 150 MB together where that fits, so that no call reads from L2), and the
    bytes of one."""
    nbytes = n * k // 2 + n * (k // 32) * 2
    return [(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda"),
             (torch.rand(n, k // 32, device="cuda") * 0.02 + 0.001).to(torch.bfloat16))
            for _ in range(copies_for(nbytes))], nbytes


def main(name: str, route: str, out: str):
    from gemma4 import ops
    from gemma4.ops import quant

    quant.qgemm_cuda_path(route)
    rows = []
    shapes = os.environ.get("PROBE_SHAPES", "31B gate_up:43008:5376,E2B gate_up:12288:1536")
    for spec in shapes.split(","):
        shape, n, k = spec.split(":")
        n, k = int(n), int(k)
        ws, nbytes = int4_weight_copies(n, k)
        for m in [int(v) for v in os.environ.get("PROBE_M", "1,8,16").split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            qw, sc = ws[0]
            y = ops.qgemm(x, qw, sc).double()
            lo = (qw & 15).to(torch.int8) - 8
            hi = (qw >> 4).to(torch.int8) - 8
            # byte i of a 16-byte run: weight i (low nibble) and i + 16 (high)
            q = torch.cat([lo.view(n, -1, 16), hi.view(n, -1, 16)], dim=2).view(n, k).double()
            w = q * sc.double().repeat_interleave(32, dim=1)
            ref = x.double() @ w.t()
            err = ((y - ref).norm() / ref.norm()).item()
            calls = [lambda w=ws[i % len(ws)]: ops.qgemm(x, *w) for i in range(max(len(ws), 8))]
            us = graph_time_ms(calls, reps=7) * 1e3
            rows.append(dict(variant=name, route=route, shape=shape, M=m, us=us, TBps=nbytes / us / 1e6, relerr=err))
            print(f"{name:10s} {route:8s} {shape:12s} M={m:3d} {us:7.1f} us {nbytes / us / 1e6:5.2f} TB/s err {err:.2e}")
        del ws
        torch.cuda.empty_cache()
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
