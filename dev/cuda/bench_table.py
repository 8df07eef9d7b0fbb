"""Markdown table of a benchmarks/gpu/bench_ops.py result file, for docs/ops.md.

    python dev/cuda/bench_table.py benchmarks/results/ops_gpu-nvidia-h200.json
"""
import json
import sys

doc = json.load(open(sys.argv[1]))
bw = doc.get("bandwidth_Bps", 4.2e12)
print(f"| op | case | floor µs | ours µs | of floor | ours launched µs | eager µs | speedup |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in doc["rows"]:
    if "ours_ms" not in r:
        print(f"| {r['op']} | {r['case']} | | error: {r.get('error', '')} | | | | |")
        continue
    floor_us = r["bytes"] / bw * 1e6
    if "ours_TFLOPs" in r and r.get("flops"):
        floor_us = max(floor_us, r["flops"] / 790e12 * 1e6)
    print(f"| {r['op']} | {r['case']} | {floor_us:.1f} | {r['ours_ms'] * 1e3:.1f} | "
          f"{100 * floor_us / (r['ours_ms'] * 1e3):.0f}% | {r['ours_launch_ms'] * 1e3:.1f} | "
          f"{r['eager_ms'] * 1e3:.0f} | {r['speedup_vs_eager']:.1f}x |")
