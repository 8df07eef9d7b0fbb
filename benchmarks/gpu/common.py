"""Shared by the GPU benchmarks: which GPU this is, and where results go.

    info = gpu_info()                                  # {"slug": "nvidia-h200", "gpu": "NVIDIA H200", ...}
    write_gpu_results("attention_gpu", rows, info, plot=draw)

Results land in benchmarks/results/<name>-<slug>.json (+ .png), like the CPU benchmarks'. When $OUT is
set (the device machine's return folder), a copy goes there too, so a lent machine's results come back.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import _git_commit, results_path, write_results


def gpu_info() -> dict[str, Any]:
    """The GPU (name, memory, multiprocessors, compute capability) and the software under the numbers."""
    p = torch.cuda.get_device_properties(0)
    name = p.name
    return {
        "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
        "gpu": name,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "multiprocessors": p.multi_processor_count,
        "compute_capability": f"{p.major}.{p.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
    }


def write_gpu_results(name: str, rows: list[dict[str, Any]], info: dict[str, Any],
                      plot: Callable[[Any], Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    path = write_results(name, rows, info, plot=plot, extra=extra)
    out = os.environ.get("OUT")
    if out:
        for suffix in (".json", ".png"):
            src = results_path(name, info, suffix)
            if src.exists():
                shutil.copy(src, Path(out) / src.name)
    return path


def cuda_time_ms(fn: Callable[[], Any], reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() over reps, CUDA events around each call, synchronised after each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_time_ms(calls: list[Callable[[], Any]], reps: int = 20) -> float:
    """Median GPU milliseconds per call: the closures in `calls` captured once, in order, in a CUDA graph,
    and the graph's replays timed with CUDA events, so no host launch cost is counted. The first four
    calls run once on a side stream first (cuBLAS handles, workspaces, lazy init). Raises what capture
    raises: a call that synchronises with the host cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls[:4]:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return cuda_time_ms(graph.replay, reps, warmup=1) / len(calls)
