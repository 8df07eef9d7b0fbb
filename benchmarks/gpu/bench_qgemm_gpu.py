"""gemma4::qgemm on the GPU against bf16 cuBLAS and torch's own weight-only int4 / int8 kernels.

    python benchmarks/gpu/bench_qgemm_gpu.py            # writes benchmarks/results/qgemm_gpu-<gpu>.json/.png
    python benchmarks/gpu/bench_qgemm_gpu.py --quick    # fewer M values

Shapes: Gemma 4 31B gate_up (N 43008, K 5376) and down (N 5376, K 21504), E2B gate_up (N 12288, K 1536);
bf16 activations, M = 1 .. 1024 rows. Methods:
  ours_int4_g32     gemma4::qgemm, int4 in groups of 32, bf16 scales (its own route by M: the tensor-core
                    GEMV up to 32 rows (16 on sm_90, 7 for large int8), the tiled or Hopper GEMM on the
                    packed weight up to 64-256, dequantize + cuBLAS above)
  ours_int8_channel gemma4::qgemm, int8, one bf16 scale per output channel
  bf16_cublas       torch.matmul on the bf16 weight
  torch_int4_g32    torch.ops.aten._weight_int4pack_mm (tinygemm), group 32
  torch_int8        torch.ops.aten._weight_int8pack_mm (per-channel), where torch has it on CUDA
Timing: each method runs `iters` calls captured in one CUDA graph (no host launch cost), timed with CUDA
events, median of several replays / iters. The calls rotate over copies of the weights whose total exceeds
150 MB (L2 is 60 MB), so every call reads its weights from HBM. TB/s = (weight + scale bytes) / time,
beside the HBM peak (H200 4.8 TB/s, H100 3.35). A method that fails records its error instead of a time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.common import gpu_info, graph_time_ms, write_gpu_results  # noqa: E402

HBM_PEAKS = {"H200": 4.8e12, "H100": 3.35e12}  # bytes/s, by a word of the GPU's name (H100: the SXM's HBM3)


def hbm_peak(gpu: str) -> float:
    """The GPU's HBM peak (the H200's where the name is not known)."""
    return next((bw for word, bw in HBM_PEAKS.items() if word in gpu), HBM_PEAKS["H200"])

SHAPES = {"31B gate_up": (43008, 5376), "31B down": (5376, 21504), "E2B gate_up": (12288, 1536)}
M_VALUES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
ROTATE_BYTES = 150 << 20


def copies_for(nbytes: int) -> int:
    return max(2, min(16, -(-ROTATE_BYTES // nbytes)))


def make_methods(n: int, k: int):
    """name -> (bytes read per call, list of weight-copy argument tuples, fn(x, *weights))."""
    from gemma4 import ops

    dev = "cuda"
    methods = {}

    def int4_g32():
        qw = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=dev)
        sc = (torch.rand(n, k // 32, device=dev) * 0.02).to(torch.bfloat16)
        return qw, sc

    nbytes = n * k // 2 + n * (k // 32) * 2
    methods["ours_int4_g32"] = (nbytes, [int4_g32() for _ in range(copies_for(nbytes))],
                                lambda x, qw, sc: ops.qgemm(x, qw, sc))

    def int8_channel():
        qw = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev)
        sc = (torch.rand(n, 1, device=dev) * 0.002).to(torch.bfloat16)
        return qw, sc

    nbytes = n * k + n * 2
    methods["ours_int8_channel"] = (nbytes, [int8_channel() for _ in range(copies_for(nbytes))],
                                    lambda x, qw, sc: ops.qgemm(x, qw, sc))

    nbytes = n * k * 2
    methods["bf16_cublas"] = (nbytes, [(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02,)
                                       for _ in range(copies_for(nbytes))],
                              lambda x, w: torch.matmul(x, w.t()))

    def tinygemm():
        # torch >= 2.5: uint8 [N, K/2] (two 4-bit values a byte) -> int32 tinygemm tiles; scales_and_zeros
        # [K/32, N, 2] bf16
        packed = torch.ops.aten._convert_weight_to_int4pack(
            torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=dev), 8)
        sz = (torch.rand(k // 32, n, 2, device=dev) * 0.02).to(torch.bfloat16)
        return packed, sz

    nbytes = n * k // 2 + (k // 32) * n * 4
    try:
        methods["torch_int4_g32"] = (nbytes, [tinygemm() for _ in range(copies_for(nbytes))],
                                     lambda x, p, sz: torch.ops.aten._weight_int4pack_mm(x, p, 32, sz))
    except Exception as e:  # noqa: BLE001
        methods["torch_int4_g32"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

    nbytes = n * k + n * 2
    methods["torch_int8"] = (nbytes, [(torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev),
                                       (torch.rand(n, device=dev) * 0.002).to(torch.bfloat16))
                                      for _ in range(copies_for(nbytes))],
                             lambda x, w, s: torch.ops.aten._weight_int8pack_mm(x, w, s))
    return methods


def plot_for(rows: list[dict], gpu: str):
    """plot(plt) for benchmarks.common.write_results: µs per call against M, one panel per shape."""
    def plot(plt):
        fig, axes = plt.subplots(1, len(SHAPES), figsize=(5.2 * len(SHAPES), 4.2))
        for ax, shape in zip(axes, SHAPES):
            for meth in sorted({r["method"] for r in rows}):
                pts = [(r["M"], r["us"]) for r in rows if r["shape"] == shape and r["method"] == meth and "us" in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=meth)
            n, k = SHAPES[shape]
            peak = hbm_peak(gpu)
            ax.axhline(n * k / 2 / peak * 1e6, color="k", lw=0.8, ls="--",
                       label=f"int4 bytes at {peak / 1e12:.2f} TB/s")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("M (rows of x)")
            ax.set_ylabel("µs per call")
            ax.set_title(f"{shape} (N {n}, K {k})")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"gemma4 qgemm vs cuBLAS bf16 and torch int4/int8, {gpu}")
        fig.tight_layout()
        return fig

    return plot


def replot(path: str) -> None:
    """Redraw the PNG beside a results JSON (the device returns few files)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(path).read_text())
    fig = plot_for(doc["rows"], doc["machine"]["gpu"])(plt)
    fig.savefig(Path(path).with_suffix(".png"), dpi=120)
    print(f"wrote {Path(path).with_suffix('.png')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M = 1, 16, 64, 512 only")
    ap.add_argument("--m", default="", help="comma-separated M values instead of the default list")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot of a results file")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    t0 = time.time()
    info = gpu_info()
    peak = hbm_peak(info["gpu"])
    print(f"# {info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}; bf16 activations; "
          f"HBM peak {peak / 1e12:.2f} TB/s")
    m_values = [int(v) for v in args.m.split(",")] if args.m else [1, 16, 64, 512] if args.quick else M_VALUES
    rows = []
    for shape, (n, k) in SHAPES.items():
        methods = make_methods(n, k)
        for name, spec in methods.items():
            if isinstance(spec, str):
                rows.append(dict(shape=shape, N=n, K=k, method=name, M=None, error=spec))
                print(f"{shape:12s} {name:18s} {spec}")
                continue
            nbytes, weights, fn = spec
            for m in m_values:
                row = dict(shape=shape, N=n, K=k, method=name, M=m, bytes=nbytes)
                try:
                    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                    iters = max(len(weights), 8)
                    calls = [lambda w=weights[i % len(weights)]: fn(x, *w) for i in range(iters)]
                    us = graph_time_ms(calls, reps=5) * 1e3
                    row.update(us=us, TBps=nbytes / us / 1e6, fraction_of_hbm_peak=nbytes / us / 1e6 / (peak / 1e12))
                    print(f"{shape:12s} {name:18s} M={m:4d} {us:9.1f} us {row['TBps']:6.2f} TB/s")
                except Exception as e:  # noqa: BLE001  (one failing method must not stop the others)
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    print(f"{shape:12s} {name:18s} M={m:4d} ERROR {row['error']}")
                    torch.cuda.synchronize()
                rows.append(row)
            del weights
        del methods
        torch.cuda.empty_cache()

    # The targets: int4 g32 31B gate_up M=1 <= 40 us; M=16 within 1.3x of M=1; the GEMV / cuBLAS switch.
    summary = {}
    t = {(r["shape"], r["method"], r["M"]): r.get("us") for r in rows}
    for shape in SHAPES:
        for meth in ("ours_int4_g32", "ours_int8_channel"):
            m1, m16 = t.get((shape, meth, 1)), t.get((shape, meth, 16))
            if m1 and m16:
                summary[f"{shape} {meth} M16/M1"] = round(m16 / m1, 3)
            m32, m64 = t.get((shape, meth, 32)), t.get((shape, meth, 64))
            if m32 and m64:
                summary[f"{shape} {meth} M64/M32 (GEMV <= 32 rows, <= 16 on sm_90; a GEMM above)"] = round(m64 / m32, 3)
            m128, cublas = t.get((shape, meth, 128)), t.get((shape, "bf16_cublas", 128))
            if m128 and cublas:
                summary[f"{shape} {meth} M128 / bf16 cuBLAS (target <= 1)"] = round(m128 / cublas, 3)
    g = t.get(("31B gate_up", "ours_int4_g32", 1))
    if g:
        summary["31B gate_up int4 g32 M=1 us (target <= 40)"] = round(g, 1)
    for key, val in summary.items():
        print(f"{key}: {val}")

    write_gpu_results("qgemm_gpu", rows, info, plot=plot_for(rows, info["gpu"]),
                      extra={"hbm_peak_Bps": peak, "summary": summary, "seconds": round(time.time() - t0, 1)})
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
