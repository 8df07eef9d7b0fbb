"""Times the CUDA qgemm (by default the GEMV, M <= 32) of whatever build GEMMA4_LIB_DIR points at, on the
shapes of benchmarks/gpu/bench_qgemm_gpu.py, with its timer: one line per (shape, format, M) and a JSON file.
dev/device_runs/qgemv_variants.sh runs it once per build (the working tree, each patch of dev/cuda/experiments/).
VM (comma-separated M values), VMETHODS (methods of the benchmark, e.g. bf16_cublas) and VSHAPES (extra shapes,
"name:N:K,...") change what is timed;
VPATH forces the CUDA qgemm's route above 32 rows (gemma4.ops.quant.qgemm_cuda_path: tiled, dequant).

    GEMMA4_LIB_DIR=build/d4 python dev/cuda/qgemv_variants.py d4 $OUT/variant-d4.json
    VM=64,128,512 VMETHODS=ours_int4_g32,bf16_cublas GEMMA4_LIB_DIR=build/x python dev/cuda/qgemv_variants.py x x.json
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bench_qgemm_gpu import SHAPES, make_methods  # noqa: E402
from benchmarks.gpu.common import graph_time_ms  # noqa: E402


def main(name: str, out: str):
    if os.environ.get("VPATH"):
        from gemma4.ops import quant

        quant.qgemm_cuda_path(os.environ["VPATH"])
    rows = []
    shapes = dict(SHAPES)
    for spec in filter(None, os.environ.get("VSHAPES", "").split(",")):
        shape, n, k = spec.split(":")
        shapes[shape] = (int(n), int(k))
    for shape, (n, k) in shapes.items():
        methods = make_methods(n, k)
        for meth in os.environ.get("VMETHODS", "ours_int4_g32,ours_int8_channel").split(","):
            nbytes, weights, fn = methods[meth]
            for m in [int(v) for v in os.environ.get("VM", "1,2,4,8,16,32").split(",")]:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                calls = [lambda w=weights[i % len(weights)]: fn(x, *w) for i in range(max(len(weights), 8))]
                us = graph_time_ms(calls, reps=7) * 1e3
                rows.append(dict(variant=name, shape=shape, method=meth, M=m, us=us, TBps=nbytes / us / 1e6))
                print(f"{name:5s} {shape:12s} {meth:18s} M={m:4d} {us:8.1f} us {nbytes / us / 1e6:5.2f} TB/s")
        del methods
        torch.cuda.empty_cache()
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
