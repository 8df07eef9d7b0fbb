"""gemma4::qgemm (weight-only int4/int8 linear) against the baselines a user would pick on CPU:
torch's int4 kernel (_weight_int4pack_mm_for_cpu, what torchao's int4 weight-only CPU path calls),
torch's int8 weight-only kernel (_weight_int8pack_mm) and plain bf16 / fp32 F.linear. Same run, same
shapes (Gemma 4 projections), bf16 activations for every quantized kernel. "ours int4 g32 tiled" is the same
weight in the 16-row tiled layout that QuantLinear runs CPU inference on where the CPU has AVX512-VNNI (elsewhere
that column times the op turning slabs back into rows).

    python benchmarks/bench_qgemm_cpu.py              # writes benchmarks/results/qgemm_cpu-<machine>.json + .png
    python benchmarks/bench_qgemm_cpu.py --quick      # fewer shapes, nothing saved
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout root: benchmarks.*

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import describe, machine_info, time_fn, write_results  # noqa: E402
from gemma4 import ops  # noqa: E402
from gemma4.ops.quant import qgemm_cpu_isa  # noqa: E402
from gemma4.quant import formats  # noqa: E402

# (name, N, K): N outputs, K inputs
SHAPES = [
    ("E2B mlp up 6144x1536", 6144, 1536),
    ("E2B mlp down 1536x6144", 1536, 6144),
    ("26B-A4B shared down 2816x2112", 2816, 2112),
    ("E4B mlp up 10240x2560", 10240, 2560),
]
M_VALUES = [1, 4, 16, 64, 256]


def torch_int4(w: torch.Tensor, group: int):
    """torch's CPU int4 path: uint levels 0..15 packed by _convert_weight_to_int4pack_for_cpu and
    (scale, zero) pairs [K/group, N, 2] in bf16; w = (u - 8) * scale + zero with zero = 0."""
    q, scales = formats.quantize_int4(w, group, torch.bfloat16)
    u = (formats.unpack_int4(q).to(torch.int32) + 8)  # [N, K] 0..15
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
    sz = torch.stack((scales.t(), torch.zeros_like(scales.t())), dim=-1).contiguous()  # [K/g, N, 2]
    # torch's kernel dequantizes as (u - 8) * scale + zero: the same weights as ours
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)


def torch_int8(w: torch.Tensor):
    q, scales = formats.quantize_int8(w, None, torch.bfloat16)
    s = scales[:, 0].contiguous()
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, q, s)


def cases(quick: bool):
    shapes = SHAPES[:2] if quick else SHAPES
    for name, n, k in shapes:
        w = torch.randn(n, k) * 0.02
        q4_32, s4_32 = formats.quantize_int4(w, 32, torch.bfloat16)
        g128 = k % 128 == 0  # 26B-A4B's K = 2112 has no groups of 128
        q4_128, s4_128 = formats.quantize_int4(w, 128 if g128 else 64, torch.bfloat16)
        q8, s8 = formats.quantize_int8(w, None, torch.bfloat16)
        q8_32, s8_32 = formats.quantize_int8(w, 32, torch.bfloat16)  # Q8_0's grid
        w_bf16, w_f32 = w.bfloat16(), w.float()
        t4_32 = formats.tile16(q4_32, s4_32)  # QuantLinear's CPU inference layout (on AVX512-VNNI CPUs)
        fns = {
            "ours int4 g32": (lambda x: ops.qgemm(x, q4_32, s4_32), q4_32.numel() + s4_32.numel() * 2),
            "ours int4 g32 tiled": (lambda x: ops.qgemm(x, *t4_32), q4_32.numel() + s4_32.numel() * 2),
            "ours int4 g128": (lambda x: ops.qgemm(x, q4_128, s4_128), q4_128.numel() + s4_128.numel() * 2),
            "ours int8 channel": (lambda x: ops.qgemm(x, q8, s8), q8.numel() + s8.numel() * 2),
            "ours int8 g32": (lambda x: ops.qgemm(x, q8_32, s8_32), q8_32.numel() + s8_32.numel() * 2),
            "torch int4 g32": (torch_int4(w, 32), q4_32.numel() + s4_32.numel() * 4),
            "torch int4 g128": (torch_int4(w, 128 if g128 else 64), q4_128.numel() + s4_128.numel() * 4),
            "torch int8 channel": (torch_int8(w), q8.numel() + n * 2),
            "bf16 F.linear": (lambda x: F.linear(x, w_bf16), n * k * 2),
            "fp32 F.linear": (lambda x: F.linear(x.float(), w_f32), n * k * 4),
        }
        if not g128:  # the "g128" columns hold groups of 64 for this shape
            fns = {lbl.replace("g128", "g64"): v for lbl, v in fns.items()}
        for m in (M_VALUES[:3] if quick else M_VALUES):
            yield name, n, k, m, fns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-s", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    machine["qgemm_isa"] = qgemm_cpu_isa()
    print(describe(machine), f"| qgemm ISA: {machine['qgemm_isa']}")
    rows = []
    for name, n, k, m, fns in cases(args.quick):
        x = torch.randn(m, k).bfloat16()
        times = {}
        for label, (fn, nbytes) in fns.items():
            t = time_fn(lambda: fn(x), target_s=args.target_s, max_total_s=2 * args.target_s)
            times[label] = t["min_ms"]
            rows.append({"shape": name, "N": n, "K": k, "M": m, "kernel": label, "min_ms": t["min_ms"],
                         "median_ms": t["median_ms"], "runs": t["runs"],
                         "weight_GBps": nbytes / (t["min_ms"] * 1e-3) / 1e9,
                         "GFLOPs": 2 * m * n * k / (t["min_ms"] * 1e-3) / 1e9})
        base4, base16 = times["torch int4 g32"], times["bf16 F.linear"]
        print(f"{name:32s} M={m:4d} | " + "  ".join(f"{lbl} {ms:8.3f}" for lbl, ms in times.items())
              + f" | int4 g32 vs torch int4 {base4 / times['ours int4 g32']:.2f}x (tiled "
              f"{base4 / times['ours int4 g32 tiled']:.2f}x), "
              f"vs bf16 {base16 / times['ours int4 g32']:.2f}x; int8 vs bf16 {base16 / times['ours int8 channel']:.2f}x")
    if args.quick:
        return

    def plot(plt):
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            for label in dict.fromkeys(r["kernel"] for r in rows):
                pts = [(r["M"], r["min_ms"]) for r in rows if r["shape"] == shape and r["kernel"] == label]
                ax.plot(*zip(*pts), marker="o", label=label, linestyle="-" if label.startswith("ours") else "--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(shape, fontsize=9)
            ax.set_xlabel("M (rows of x)")
            ax.set_ylabel("ms (min)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"qgemm vs torch, {machine['cpu']}, {machine['threads']} threads, ISA {machine['qgemm_isa']}",
                     fontsize=9)
        fig.tight_layout()
        return fig

    print(write_results("qgemm_cpu", rows, machine, plot=plot))


if __name__ == "__main__":
    main()
