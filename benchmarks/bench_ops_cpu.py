"""Our CPU operators against their plain-PyTorch baselines, 2 threads.

    python benchmarks/bench_ops_cpu.py                  # every case; writes benchmarks/results/
    python benchmarks/bench_ops_cpu.py --filter rope    # only cases whose module/op/case contain "rope"
    python benchmarks/bench_ops_cpu.py --quick          # shorter timing (partial runs are not saved
                                                        # unless --save is given)

Cases come from benchmarks/ops_cpu/bench_*.py (see benchmarks/ops_cpu/__init__.py). A module that
fails to import, or a case that raises, is reported in the table and the run goes on.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout root: benchmarks.*

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    BENCH_DIR, describe, fmt_ms, machine_info, print_table, time_fn, write_results)

CASES_DIR = BENCH_DIR / "ops_cpu"


def discover() -> list[str]:
    """Every benchmarks/ops_cpu/bench_*.py; --filter applies per case (a family may hold several ops)."""
    return sorted(p.stem for p in CASES_DIR.glob("bench_*.py"))


def _short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:160]


def load_cases(module_name: str) -> tuple[list[dict], str | None]:
    """Import benchmarks.ops_cpu.<module_name> and call cases(); (cases, error message or None)."""
    try:
        mod = importlib.import_module(f"benchmarks.ops_cpu.{module_name}")
    except Exception as e:  # noqa: BLE001  (one broken family must not stop the others)
        traceback.print_exc(file=sys.stderr)
        return [], f"import failed: {_short_error(e)}"
    if not hasattr(mod, "cases"):
        return [], "no cases() function"
    try:
        cases = list(mod.cases())
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [], f"cases() raised: {_short_error(e)}"
    for c in cases:
        c.setdefault("module", module_name)
    return cases, None


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def max_abs_diff(ours_out, base_out) -> float | None:
    """max |ours - baseline| over the first tensor of each output, when their shapes match."""
    a, b = _first_tensor(ours_out), _first_tensor(base_out)
    if a is None or b is None or a.shape != b.shape:
        return None
    with torch.no_grad():
        return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def run_case(case: dict, timing: dict, ours_cache: dict) -> dict:
    row = {k: case.get(k) for k in ("module", "op", "case", "baseline_name")}
    row.update(ours_ms=None, baseline_ms=None, speedup=None, max_abs_diff=None, error=None)
    try:
        key = id(case["ours"])
        if key in ours_cache:  # the same op with another baseline: time ours once
            ours_out, t = ours_cache[key]
        else:
            t = time_fn(case["ours"], keep_output=True, **timing)
            ours_out = t.pop("output")
            ours_cache[key] = (ours_out, t)
        row["ours_ms"], row["ours_min_ms"], row["ours_runs"] = t["median_ms"], t["min_ms"], t["runs"]
    except Exception as e:  # noqa: BLE001
        row["error"] = f"ours: {_short_error(e)}"
        return row
    try:
        t = time_fn(case["baseline"], keep_output=True, **timing)
        base_out = t.pop("output")
        row["baseline_ms"], row["baseline_min_ms"], row["baseline_runs"] = t["median_ms"], t["min_ms"], t["runs"]
        row["speedup"] = row["baseline_ms"] / row["ours_ms"]
    except Exception as e:  # noqa: BLE001
        row["error"] = f"baseline: {_short_error(e)}"
        return row
    try:
        row["max_abs_diff"] = max_abs_diff(ours_out, base_out)
    except Exception:  # noqa: BLE001  (the check is a courtesy; timing stands)
        pass
    return row


def matches(case: dict, filter_: str | None) -> bool:
    if not filter_:
        return True
    hay = " ".join(str(case.get(k, "")) for k in ("module", "op", "case", "baseline_name")).lower()
    return filter_.lower() in hay


def plot_speedups(rows: list[dict]):
    good = [r for r in rows if r.get("speedup")]

    def draw(plt):
        labels = [f"{r['op']}  {r['case']}  vs {r['baseline_name']}" for r in good]
        speed = [r["speedup"] for r in good]
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * max(1, len(good))))
        colors = ["tab:green" if s >= 1 else "tab:red" for s in speed]
        y = range(len(good))
        ax.barh(list(y), [s - 1.0 for s in speed], left=1.0, color=colors)  # bars grow from 1x
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("speedup = baseline time / our time (log scale; > 1: ours faster)")
        ax.set_title("gemma4 CPU operators vs baselines")
        for yi, s in zip(y, speed):
            ax.text(s, yi, f" {s:.2f}x", va="center", fontsize=6)
        return fig

    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", help="only cases whose module, op, case or baseline name contain this (case-insensitive)")
    ap.add_argument("--quick", action="store_true", help="short timing: fewer runs per case")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--save", action="store_true", help="write results even for a --filter/--quick run")
    ap.add_argument("--no-save", action="store_true", help="do not write results")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    print(describe(machine))
    timing = (dict(target_s=0.2, min_runs=3, warmup=1, max_total_s=0.5) if args.quick
              else dict(target_s=1.0, min_runs=5, warmup=2, max_total_s=2.0))

    rows: list[dict] = []
    for module_name in discover():
        cases, error = load_cases(module_name)
        if error:
            if not args.filter or args.filter.lower() in module_name.lower():
                rows.append({"module": module_name, "op": module_name.removeprefix("bench_"), "case": "-",
                             "baseline_name": "-", "ours_ms": None, "baseline_ms": None, "speedup": None,
                             "max_abs_diff": None, "error": error})
                print(f"{module_name}: {error}", flush=True)
            continue
        ours_cache: dict = {}
        for case in cases:
            if not matches(case, args.filter):
                continue
            row = run_case(case, timing, ours_cache)
            rows.append(row)
            status = row["error"] or (f"{fmt_ms(row['ours_ms'])} ms vs {fmt_ms(row['baseline_ms'])} ms "
                                      f"({row['speedup']:.2f}x)")
            print(f"  {row['op']:<24} {row['case']:<36} vs {row['baseline_name']:<10} {status}", flush=True)
        ours_cache.clear()

    if not rows:
        print("no cases matched" if args.filter else f"no benchmark modules in {CASES_DIR}")
        return 1

    print()
    table = []
    for r in rows:
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        table.append([r["op"], r["case"], r["baseline_name"], fmt_ms(r["ours_ms"]), fmt_ms(r["baseline_ms"]),
                      speed, diff, r.get("error") or ""])
    print_table(["op", "case", "baseline", "ours ms", "base ms", "speedup", "max|diff|", "error"], table,
                align="lllrrrrl")
    timed = [r["speedup"] for r in rows if r.get("speedup")]
    failed = [r for r in rows if r.get("error")]
    if timed:
        geo = math.exp(sum(math.log(s) for s in timed) / len(timed))
        slower = sum(s < 1 for s in timed)
        print(f"\n{len(timed)} cases timed, geometric-mean speedup {geo:.2f}x, {slower} slower than baseline, "
              f"{len(failed)} failed")

    partial = bool(args.filter or args.quick)
    if args.no_save or (partial and not args.save):
        print("results not saved" + (" (partial run; pass --save to write them)" if partial and not args.no_save else ""))
    else:
        write_results("ops_cpu", rows, machine, plot=plot_speedups(rows) if timed else None,
                      extra={"timing": timing})
    return 0


if __name__ == "__main__":
    sys.exit(main())
