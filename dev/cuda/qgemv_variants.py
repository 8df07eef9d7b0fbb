"""Times the CUDA qgemm GEMV (M <= 32) of whatever build GEMMA4_LIB_DIR points at, on the shapes of
benchmarks/gpu/bench_qgemm_gpu.py, with its timer: one line per (shape, format, M) and a JSON file.
dev/device_runs/qgemv_variants.sh runs it once per build (the working tree, each patch of dev/cuda/experiments/).

    GEMMA4_LIB_DIR=build/d4 python dev/cuda/qgemv_variants.py d4 $OUT/variant-d4.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bench_qgemm_gpu import SHAPES, make_methods  # noqa: E402
from benchmarks.gpu.common import graph_time_ms  # noqa: E402


def main(name: str, out: str):
    rows = []
    for shape, (n, k) in SHAPES.items():
        methods = make_methods(n, k)
        for meth in ("ours_int4_g32", "ours_int8_channel"):
            nbytes, weights, fn = methods[meth]
            for m in (1, 2, 4, 8, 16, 32):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                calls = [lambda w=weights[i % len(weights)]: fn(x, *w) for i in range(max(len(weights), 8))]
                us = graph_time_ms(calls, reps=7) * 1e3
                rows.append(dict(variant=name, shape=shape, method=meth, M=m, us=us, TBps=nbytes / us / 1e6))
                print(f"{name:5s} {shape:12s} {meth:18s} M={m:3d} {us:8.1f} us {nbytes / us / 1e6:5.2f} TB/s")
        del methods
        torch.cuda.empty_cache()
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
