"""Single-thread GFLOP/s (CPU time, robust to a shared machine) of a dev forward for tuning: python tune_fwd.py v2 dtype "[(bk,tm,po),...]" """
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
import torch
import load
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
mod = load.load(sys.argv[1])
dt = getattr(torch, sys.argv[2])
tunes = eval(sys.argv[3])
shapes = eval(sys.argv[4]) if len(sys.argv) > 4 else [(1024, 1024, 8, 1, 256, 512), (512, 512, 8, 1, 512, 0)]
def bench(f, n=7):
    f(); ts = []
    for _ in range(n):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    return min(ts)
for (T, S, nH, nKV, hd, W) in shapes:
    i = torch.arange(S)[None, :]; p = torch.arange(T)[:, None] + S - T
    pairs = ((i <= p) & ((i > p - W) if W > 0 else True)).sum().item()
    fl = 4 * pairs * hd * nH
    ncopy = int(os.environ.get("COLD", "1"))  # >1: cycle through copies so K/V come from DRAM (like 35 layers)
    qkv = [(torch.randn(1, T, nH, hd, dtype=dt), torch.randn(1, S, nKV, hd, dtype=dt), torch.randn(1, S, nKV, hd, dtype=dt)) for _ in range(ncopy)]
    out = []
    for tu in tunes:
        def f():
            for (q, k, v) in qkv: mod.fwd(q, k, v, None, 1.0, W, *tu)
        t = bench(f) / ncopy
        out.append(f"{tu}: {t*1e3:.1f}ms {fl/t/1e9:.1f}GF")
    print(f"T{T} hd{hd} W{W}: " + " | ".join(out), flush=True)
