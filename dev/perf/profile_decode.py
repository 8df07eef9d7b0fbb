"""Where a decode step's time goes (issue 13, lean decode step): torch.profiler over N greedy decode steps
of a random model, ops grouped into GEMM-like (gemma4::linear / qgemm, aten::mm / addmm / matmul / linear)
and everything else, plus the wall time the profiler does not attribute to any op (Python, dispatch).

    python dev/perf/profile_decode.py --preset small-e2b --dtype bfloat16 --steps 16 [--quant int4]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import gemma4
from gemma4.cache import Gemma4Cache
from gemma4.modeling.random_model import build_random_model

GEMM = ("gemma4::linear", "gemma4::qgemm", "aten::mm", "aten::addmm", "aten::bmm")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small-e2b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quant", choices=["int4", "int8"], default=None)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = build_random_model(a.preset, getattr(torch, a.dtype), seed=0)
    if a.quant:
        gemma4.quantize(model, gemma4.QuantizationConfig(weights=a.quant, group_size=32))
    ids = torch.randint(3, 4096, (1, 64))
    cache = Gemma4Cache(model.config, max_cache_len=64 + 2 * a.steps + 4, batch_size=1)
    with torch.inference_mode():
        tok = model(input_ids=ids, cache=cache, logits_to_keep=1).logits[0, -1].argmax()
        for _ in range(4):  # warm-up steps
            tok = model(input_ids=tok.view(1, 1), cache=cache).logits[0, -1].argmax()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                tok = model(input_ids=tok.view(1, 1), cache=cache).logits[0, -1].argmax()
            wall = (time.perf_counter() - t0) / a.steps
    rows = [e for e in prof.key_averages() if e.key.startswith(("aten::", "gemma4::"))]
    # self CPU time: each op's own time, so nested calls are not counted twice
    gemm = sum(e.self_cpu_time_total for e in rows if e.key in GEMM) / 1e3 / a.steps
    other = sum(e.self_cpu_time_total for e in rows if e.key not in GEMM) / 1e3 / a.steps
    calls = sum(e.count for e in rows) / a.steps
    print(f"{a.preset} {a.dtype} {a.quant or ''}: {wall * 1e3:.1f} ms/token wall (under the profiler); "
          f"GEMMs {gemm:.1f} ms, other ops {other:.1f} ms, unattributed {wall * 1e3 - gemm - other:.1f} ms; "
          f"{calls:.0f} op calls per token")
    top = sorted((e for e in rows if e.key not in GEMM), key=lambda e: -e.self_cpu_time_total)[:10]
    for e in top:
        print(f"  {e.key:40s} {e.self_cpu_time_total / 1e3 / a.steps:7.2f} ms  {e.count / a.steps:6.0f} calls")


if __name__ == "__main__":
    main()
