"""Shared benchmark helpers: what machine this is, how to time a callable, where results go.

Every benchmark times ours against a baseline in the same run and reports the ratio; absolute
times are only comparable on the machine named in the results file.

    from benchmarks.common import machine_info, time_fn, write_results
    machine = machine_info()                   # {"slug": "cpu-amd-epyc-2t", "cpu": ..., ...}
    t = time_fn(lambda: f(x))                  # {"median_ms": ..., "min_ms": ..., "runs": ...}
    write_results("ops_cpu", rows, machine, plot=draw)   # benchmarks/results/ops_cpu-<slug>.json (+ .png)
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, lscpu as a fallback, platform otherwise."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _slug(cpu: str, threads: int) -> str:
    """'Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz', 2 -> 'cpu-intel-xeon-platinum-8375c-2t'."""
    name = re.sub(r"\((r|tm|c)\)", " ", cpu.lower())
    name = re.sub(r"@.*$", " ", name)  # clock speed
    name = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", name)
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
    return f"cpu-{name}-{threads}t"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Describe this machine and the torch/gemma4 builds; call after torch.set_num_threads.

    slug names the results file: CPU model and the thread count the benchmark ran with.
    """
    threads = threads if threads is not None else torch.get_num_threads()
    cpu = _cpu_model()
    flags = _cpu_flags()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    info: dict[str, Any] = {
        "slug": _slug(cpu, threads),
        "cpu": cpu,
        "cores": cores,
        "threads": threads,
        "isa": {
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx2": "avx2" in flags, "fma": "fma" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "git_commit": _git_commit(),
        # Other processes on the cores make every parallel region wait for a time slice: a busy
        # machine can show 100x slower multi-threaded timings. Recorded so a bad run can be spotted.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:  # which kernels were measured: the gemma4 build (its ISA baseline, compiler, ...)
        from gemma4 import _native  # noqa: PLC0415

        info["gemma4_build"] = {k: v for k, v in _native.build_info.items() if isinstance(v, (str, int, float, bool))}
    except Exception as e:  # noqa: BLE001  (a benchmark of baselines alone still runs)
        info["gemma4_build"] = f"unavailable: {e}"
    return info


def describe(machine: dict[str, Any]) -> str:
    """One line for the top of a benchmark's output (plus a warning when the machine is busy)."""
    line = (f"{machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads, "
            f"{machine['isa']['torch_cpu_capability']}), torch {machine['torch']}, "
            f"commit {machine.get('git_commit') or '?'}")
    load = machine.get("load_avg_1min")
    if load is not None and load > 0.5:
        line += (f"\nWARNING: load average {load:.2f}: other processes are using the CPU; "
                 "timings (multi-threaded ones especially) will be noisy")
    return line


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_fn(fn: Callable[[], Any], target_s: float = 1.0, min_runs: int = 5, max_runs: int = 1000,
            warmup: int = 2, max_total_s: float = 2.0, keep_output: bool = False) -> dict[str, Any]:
    """Median wall time of fn() in milliseconds.

    Runs `warmup` untimed calls (the first of which also estimates the cost; a call slower than
    max_total_s / 2 ends the warm-up there), then times N calls one by one with time.perf_counter,
    N chosen so that the timed calls take about target_s (at least min_runs, at most max_runs;
    fewer than min_runs only when min_runs calls would exceed max_total_s, and never fewer than 1).
    Returns median_ms, min_ms, runs, and with keep_output the first call's result as "output".
    """
    t0 = time.perf_counter()
    output = fn()
    first = time.perf_counter() - t0
    if not keep_output:
        output = None
    for _ in range(max(0, warmup - 1)):
        if first > max_total_s / 2:  # slow calls: one warm-up is enough, the budget goes to timed runs
            break
        t0 = time.perf_counter()
        fn()
        first = min(first, time.perf_counter() - t0)
    per_call = max(first, 1e-7)
    runs = int(target_s / per_call)
    runs = max(min_runs, min(max_runs, runs))
    runs = max(1, min(runs, int(max_total_s / per_call)))
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a timed call is noise, not cost
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    result = {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "runs": runs}
    if keep_output:
        result["output"] = output
    return result


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

def results_path(name: str, machine: dict[str, Any], suffix: str = ".json") -> Path:
    return RESULTS_DIR / f"{name}-{machine['slug']}{suffix}"


def write_results(name: str, rows: list[dict[str, Any]], machine: dict[str, Any],
                  plot: Callable[[Any], Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write benchmarks/results/<name>-<machine slug>.json and, given plot, a PNG beside it.

    plot(plt) draws with matplotlib.pyplot and returns the Figure; when matplotlib is missing the
    picture is skipped with a message (pip install matplotlib, or the `notebooks` extra).
    Returns the JSON path.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = results_path(name, machine)
    doc = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine,
        **(extra or {}),
        "rows": rows,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    print(f"wrote {path.relative_to(REPO_ROOT)}")
    if plot is not None:
        try:
            import matplotlib  # noqa: PLC0415

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
            return path
        fig = plot(plt)
        png = results_path(name, machine, ".png")
        fig.savefig(png, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {png.relative_to(REPO_ROOT)}")
    return path


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def print_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> None:
    """A plain text table; align is one char per column, 'l' or 'r' (default: left, then right)."""
    align = align or "l" * 2 + "r" * (len(headers) - 2)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align))

    print(line(headers).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r).rstrip())


def add_repo_to_path() -> None:
    """Let `python benchmarks/x.py` import benchmarks.* (and tests.* helpers) from the checkout.

    gemma4 itself comes from the installed package, or from PYTHONPATH=python with GEMMA4_LIB_DIR.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
