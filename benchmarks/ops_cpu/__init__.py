"""CPU benchmark cases, one module per op family: bench_<family>.py.

Each module exposes

    def cases() -> list[dict]

and every dict has the keys
    "op":            the operator, e.g. "rms_norm" (or "rms_norm_backward")
    "case":          shape and dtype, e.g. "T=2048 H=1536 bf16"
    "ours":          zero-argument callable running our op (inputs prepared beforehand)
    "baseline":      zero-argument callable running the baseline on the same inputs
    "baseline_name": e.g. "reference" (python/gemma4/ops/reference.py) or "sdpa"

An op with several baselines returns one dict per baseline with the same op and case; the runner
times `ours` once when it is the same callable object. Build inputs inside cases() (or lazily in
the callables' closures), not at import time, so that --filter stays cheap. The runner,
benchmarks/bench_ops_cpu.py, sets 2 threads, times both sides, checks that their first output
tensors agree when their shapes match, and writes benchmarks/results/ops_cpu-<machine>.json.
"""
