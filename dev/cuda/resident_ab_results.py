"""Writes benchmarks/results/NAME-<gpu>.json (default NAME qgemm_gpu_resident_ab) and a plot from two
dev/cuda/resident_probe.py outputs of one device call (dev/device_runs/resident_units.sh: build/base and build/x on the
same route; resident_wgmma.sh: one build on two routes): the time of each shape and row count in both, their ratio,
and the HBM floor (weight and scale bytes over the GPU's peak).

    python dev/cuda/resident_ab_results.py BASE.json X.json [MACHINE.json|- [NAME]]

MACHINE.json: the GPU's description (benchmarks/gpu/common.py: gpu_info()) where this runs off the GPU; on the GPU
("-" or none) it is read there.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.bench_qgemm_gpu import SHAPES, hbm_peak  # noqa: E402
from benchmarks.gpu.common import write_gpu_results  # noqa: E402


def int4_g32_bytes(n: int, k: int) -> int:
    """Packed int4 weight and its bf16 scales of 32 weights."""
    return n * k // 2 + n * (k // 32) * 2


def main(base_path: str, x_path: str, machine_path: str | None = None, name: str = "qgemm_gpu_resident_ab") -> None:
    if machine_path in (None, "-"):
        from benchmarks.gpu.common import gpu_info  # noqa: PLC0415

        machine = gpu_info()
    else:
        machine = json.loads(Path(machine_path).read_text())
    peak = hbm_peak(machine["gpu"])
    base = {(r["shape"], r["M"]): r for r in json.loads(Path(base_path).read_text())}
    rows = []
    for r in json.loads(Path(x_path).read_text()):
        b = base.get((r["shape"], r["M"]))
        if b is None:
            continue
        floor_us = int4_g32_bytes(*SHAPES[r["shape"]]) / peak * 1e6
        rows.append(dict(shape=r["shape"], route=r["route"], base_route=b["route"], M=r["M"], base_us=b["us"],
                         us=r["us"], ratio=r["us"] / b["us"], hbm_floor_us=floor_us, relerr=r["relerr"],
                         base_relerr=b["relerr"]))

    def plot(plt):
        shapes = sorted({row["shape"] for row in rows})
        fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            sel = [row for row in rows if row["shape"] == shape]
            ms = [row["M"] for row in sel]
            ax.plot(ms, [row["base_us"] for row in sel], "o-", label=f"before (base): {sel[0]['base_route']}")
            ax.plot(ms, [row["us"] for row in sel], "o-", label=f"this change: {sel[0]['route']}")
            ax.axhline(sel[0]["hbm_floor_us"], color="gray", ls="--", label="HBM floor")
            ax.set(title=f"{shape}, int4 g32", xlabel="rows of x", ylabel="µs", ylim=(0, None))
            ax.legend()
        fig.suptitle(machine["gpu"])
        return fig

    write_gpu_results(name, rows, machine, plot=plot,
                      extra={"sources": [base_path, x_path], "hbm_peak_Bps": peak})


if __name__ == "__main__":
    main(*sys.argv[1:5])
