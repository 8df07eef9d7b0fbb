"""gemma4::linear against torch's F.linear at Gemma 4 E2B's projection shapes, decode and prefill.

    python benchmarks/bench_linear_cpu.py                # 2 threads, rows 1 and 128, float32 and bfloat16
    python benchmarks/bench_linear_cpu.py --quick        # fewer shapes, not saved unless --save

Decode (rows <= 8) is memory bound: the table gives the weight bytes streamed per second (GB/s);
prefill is compute bound: GFLOP/s. Min of the timed runs (robust on a shared machine) and the
ratio ours / torch in the same run. Results: benchmarks/results/linear_cpu-<machine>.json (+ .png).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import describe, machine_info, print_table, time_fn, write_results  # noqa: E402

# (name, out_features N, in_features K): E2B's projections (hidden 1536, 8 heads, head_dim 256 on
# sliding / 512 on full layers, 1 KV head, MLP 6144 or 12288 in KV-shared layers, PLE 256 x 35).
E2B_SHAPES = [
    ("q_proj sliding", 2048, 1536), ("q_proj full", 4096, 1536), ("k/v_proj sliding", 256, 1536),
    ("o_proj sliding", 1536, 2048), ("gate/up", 6144, 1536), ("gate/up wide", 12288, 1536),
    ("down", 1536, 6144), ("down wide", 1536, 12288), ("ple gate", 256, 1536), ("ple proj", 1536, 256),
    ("ple model proj", 8960, 1536), ("lm_head", 262144, 1536),
]
QUICK = {"q_proj sliding", "gate/up wide", "down wide", "lm_head"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def bench_shape(name, N, K, rows, dtype, target_s):
    import gemma4.ops as ops

    torch.manual_seed(0)
    w = torch.randn(N, K).div_(K**0.5).to(dtype)
    x = torch.randn(rows, K).to(dtype)
    isa = ops.linear_cpu_isa()
    ours = time_fn(lambda: ops.linear(x, w), target_s=target_s)
    base = time_fn(lambda: F.linear(x, w), target_s=target_s)
    avx2 = None
    if rows <= 8 and isa != "avx2":  # decode on an AVX-512 CPU: the AVX2 kernel beside it
        ops.linear_cpu_isa("avx2")
        try:
            avx2 = time_fn(lambda: ops.linear(x, w), target_s=target_s)
        finally:
            ops.linear_cpu_isa("auto")
    nbytes = N * K * w.element_size()
    flops = 2.0 * rows * N * K
    row = {"shape": name, "N": N, "K": K, "rows": rows, "dtype": str(dtype).removeprefix("torch."),
           "ours_ms": ours["min_ms"], "torch_ms": base["min_ms"],
           "ours_median_ms": ours["median_ms"], "torch_median_ms": base["median_ms"],
           "ours_isa": isa if rows <= 8 else "packed GEMM / BLAS"}
    if avx2 is not None:
        row["ours_avx2_ms"] = avx2["min_ms"]
        row["ours_avx2_gb_s"] = nbytes / (avx2["min_ms"] / 1e3) / 1e9
    for who in ("ours", "torch"):
        s = row[f"{who}_ms"] / 1e3
        row[f"{who}_gb_s"] = nbytes / s / 1e9
        row[f"{who}_gflop_s"] = flops / s / 1e9
    row["speedup"] = row["torch_ms"] / row["ours_ms"]
    return row


def plot(rows):
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, decode in zip(axes, (True, False)):
            sel = [r for r in rows if (r["rows"] <= 8) == decode]
            labels = [f"{r['shape']}\n{r['dtype']} M={r['rows']}" for r in sel]
            ax.barh(range(len(sel)), [r["speedup"] for r in sel], color="tab:blue")
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_yticks(range(len(sel)), labels, fontsize=7)
            ax.set_xlabel("speedup vs torch F.linear (same run)")
            ax.set_title("decode (weight streaming)" if decode else "prefill (GEMM)")
        fig.tight_layout()
        return fig
    return draw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,128", help="rows of x (tokens) to time, comma-separated")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--save", action="store_true", help="write results for a --quick run too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    print(describe(machine))
    shapes = [s for s in E2B_SHAPES if not args.quick or s[0] in QUICK]
    rows = []
    for dt in args.dtypes.split(","):
        for m in (int(r) for r in args.rows.split(",")):
            for name, N, K in shapes:
                if m > 8 and name == "lm_head":
                    continue  # prefill keeps only the last position's logits
                r = bench_shape(name, N, K, m, DTYPES[dt], 0.3 if args.quick else 1.0)
                rows.append(r)
                unit = "gb_s" if m <= 8 else "gflop_s"
                avx2 = f"  (avx2 kernel {r['ours_avx2_gb_s']:6.1f})" if "ours_avx2_gb_s" in r else ""
                print(f"{dt:9s} M={m:<4d} {name:18s} ours {r['ours_ms']:8.3f} ms ({r['ours_' + unit]:6.1f}) "
                      f"torch {r['torch_ms']:8.3f} ms ({r['torch_' + unit]:6.1f})  x{r['speedup']:.2f}{avx2}", flush=True)
    print_table(["dtype", "rows", "shape", "ours ms", "torch ms", "ours GB/s|GFLOP/s", "torch", "x"],
                [[r["dtype"], r["rows"], r["shape"], f"{r['ours_ms']:.3f}", f"{r['torch_ms']:.3f}",
                  f"{r['ours_gb_s' if r['rows'] <= 8 else 'ours_gflop_s']:.1f}",
                  f"{r['torch_gb_s' if r['rows'] <= 8 else 'torch_gflop_s']:.1f}", f"{r['speedup']:.2f}"]
                 for r in rows])
    if not args.quick or args.save:
        print("wrote", write_results("linear_cpu", rows, machine, plot=plot(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
