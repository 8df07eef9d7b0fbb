"""Experiment (2026-12-06, twenty-third session): E2B decode with the weights in huge pages
(gemma4/huge_pages.py) against without (GEMMA4_HUGE_PAGES=0), each a fresh process as the benchmark's rows are
(`bench_vs_llamacpp.py --child gemma4`, 128-token prompt, 64 new tokens, 3 rounds), the two settings alternating.

    python dev/perf/huge_pages_decode_ab.py [repeats] [dtypes, e.g. int8,bfloat16] [workdir]
"""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vs_llamacpp.py"


def child(dtype: str, huge: str, workdir: Path) -> dict:
    model = workdir / ("gemma-4-E2B-random-f32" if dtype == "float32" else "gemma-4-E2B-random")
    extra = ["--quantize-head", "1"] if dtype in ("int8", "int4") else []
    out = subprocess.run([sys.executable, str(BENCH), "--child", "gemma4", "--dtype", dtype, "--model-dir", str(model),
                          "--rounds", "3", "--threads", "2", *extra], check=True, capture_output=True, text=True,
                         env=dict(os.environ, GEMMA4_HUGE_PAGES=huge, OMP_NUM_THREADS="2")).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    dtypes = (sys.argv[2] if len(sys.argv) > 2 else "int8,bfloat16").split(",")
    workdir = Path(sys.argv[3] if len(sys.argv) > 3 else "/work/e2bbench")
    for dtype in dtypes:
        for _ in range(repeats):
            for huge in ("0", "1"):
                r = child(dtype, huge, workdir)
                rates = [63 / s for s in r["decode_s_all"]]
                print(f"{dtype:9s} huge pages {'on ' if huge == '1' else 'off'}: decode "
                      f"{statistics.median(rates):.2f} tok/s (rounds {', '.join(f'{x:.2f}' for x in rates)}), "
                      f"load {r['load_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
