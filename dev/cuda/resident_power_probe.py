"""Is the x-resident GEMV's time data-dependent? The forced "resident" route runs the same instructions at 1-8 rows
of x (one 8-column MMA tile), yet 31B gate_up took ~53 us at one row and ~60 at two on the H100s
(dev/device_runs/2026-12-07c-*.log). Here the same shapes run with rows of x that are zero ("z": only the first
row random) or scaled down ("s": x * 2^-8, the same bits toggling less in the MMA's product terms), and a
sustained loop of each case samples the SM clock and board power (nvidia-smi, in the background, every 20 ms).
If the zero rows give back the one-row time while the instruction stream is the same, the bound is the clock
under the power cap, not the instructions.

    GEMMA4_LIB_DIR=build/x POWER_M=1,16 python dev/cuda/resident_power_probe.py [route [tag]]
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.common import graph_time_ms  # noqa: E402
from dev.cuda.resident_probe import int4_weight_copies  # noqa: E402


def sampled(fn, seconds: float) -> tuple[float, float, float, int]:
    """Runs fn() (one pass of the calls) back to back for `seconds` while nvidia-smi samples: the sustained
    microseconds a pass (CUDA events over the whole loop), the median SM clock (MHz) and power (W), and the
    number of samples."""
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "20"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)  # its first samples are before the load
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    passes, end = 0, time.time() + seconds
    start.record()
    while time.time() < end:
        for _ in range(50):
            fn()
        passes += 50
        torch.cuda.synchronize()
    stop.record()
    torch.cuda.synchronize()
    smi.terminate()
    lines = smi.communicate()[0].strip().splitlines()[12:]  # drop the samples before the load
    vals = [tuple(float(v) for v in ln.split(",")) for ln in lines if ln.count(",") == 1]
    clocks = sorted(v[0] for v in vals)
    power = sorted(v[1] for v in vals)
    return start.elapsed_time(stop) * 1e3 / passes, clocks[len(clocks) // 2], power[len(power) // 2], len(vals)


def main(route: str = "resident", tag: str = ""):
    from gemma4 import ops
    from gemma4.ops import quant

    quant.qgemm_cuda_path(route)
    k = 5376
    ws, nbytes = int4_weight_copies(43008, k)  # 31B gate_up
    cases = []
    for m in [int(v) for v in os.environ.get("POWER_M", "1,2,8,16").split(",")]:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        cases.append((f"M={m:2d}", x))
        if m > 1:
            z = torch.zeros_like(x)
            z[0] = x[0]
            cases.append((f"M={m:2d}z", z))
            cases.append((f"M={m:2d}s", x * 2**-8))
    for name, x in cases:
        calls = [lambda w=ws[i % len(ws)]: ops.qgemm(x, *w) for i in range(max(len(ws), 8))]
        us = graph_time_ms(calls, reps=7) * 1e3
        graph = torch.cuda.CUDAGraph()  # the same calls replayed, so that no host launch gap is timed
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        pass_us, mhz, watts, samples = sampled(graph.replay, 2.0)
        print(f"{tag} {route} 31B gate_up {name:6s} {us:6.1f} us {nbytes / us / 1e6:5.2f} TB/s  sustained: "
              f"{pass_us / len(calls):6.1f} us {mhz:5.0f} MHz {watts:5.0f} W ({samples} samples)", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
