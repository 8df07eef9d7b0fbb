"""Times benchmarks/ops_cpu/bench_attention.cases() with 2 threads: N runs of ours, then N of the
baseline, min of each (the least disturbed run on a shared machine), plus the load average.
(Not interleaved: right after a baseline that streams hundreds of MB, the next 16 MB read on this VM
costs ~15 ms whatever reads it -- even k.sum() -- which would swamp a 1 ms decode step.)
    GEMMA4_LIB_DIR=build/dev-attn PYTHONPATH=python python dev/attention/bench_report.py [filter]
    THREADS=1 CLOCK=cpu ... (one thread, CPU time: robust on a busy machine)"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../.."))
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
from benchmarks.ops_cpu.bench_attention import cases
flt = sys.argv[1] if len(sys.argv) > 1 else ""
# CLOCK=cpu with THREADS=1: CPU time of the one thread, which a busy machine barely disturbs.
clock = time.process_time if os.environ.get("CLOCK") == "cpu" else time.perf_counter
def once(f):
    t = clock(); f(); return clock() - t
print("load average before:", os.getloadavg())
for c in cases():
    name = f"{c['op']} | {c['case']} | {c['baseline_name']}"
    if flt and flt not in name:
        continue
    for _ in range(3):
        c["ours"]()
    to = [once(c["ours"]) for _ in range(15)]
    tb0 = once(c["baseline"])
    n = max(3, min(15, int(2.0 / max(tb0, 1e-4))))
    tb = [once(c["baseline"]) for _ in range(n)]
    print(f"{name:95s} ours {min(to)*1e3:9.3f} ms  base {min(tb)*1e3:9.3f} ms  x{min(tb)/min(to):6.2f}  (n={n}, load {os.getloadavg()[0]:.1f})", flush=True)
