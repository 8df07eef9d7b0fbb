"""Single-thread CPU-time GFLOP/s of the shipped op (forward and backward), robust on a shared machine:
    GEMMA4_LIB_DIR=build/dev-attn PYTHONPATH=python python dev/attention/tune_shipped.py [dtype]"""
import os, sys, time
import torch
import gemma4._native  # noqa: F401
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
dt = getattr(torch, sys.argv[1] if len(sys.argv) > 1 else "float32")
shapes = eval(sys.argv[2]) if len(sys.argv) > 2 else [(1024, 1024, 8, 1, 256, 512), (512, 512, 8, 1, 512, 0)]
def bench(f, n=5):
    f(); ts = []
    for _ in range(n):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    return min(ts)
for (T, S, nH, nKV, hd, W) in shapes:
    i = torch.arange(S)[None, :]; p = torch.arange(T)[:, None] + S - T
    pairs = ((i <= p) & ((i > p - W) if W > 0 else True)).sum().item()
    q = torch.randn(1, T, nH, hd, dtype=dt); k = torch.randn(1, S, nKV, hd, dtype=dt); v = torch.randn(1, S, nKV, hd, dtype=dt)
    o, l = torch.ops.gemma4.attention(q, k, v, None, 1.0, W)
    g = torch.randn_like(o)
    tf = bench(lambda: torch.ops.gemma4.attention(q, k, v, None, 1.0, W))
    tb = bench(lambda: torch.ops.gemma4.attention_backward(g, q, k, v, o, l, None, 1.0, W))
    print(f"T{T} S{S} nH{nH} nKV{nKV} hd{hd} W{W} {dt}: fwd {tf*1e3:.1f}ms {4*pairs*hd*nH/tf/1e9:.1f}GF/s | "
          f"bwd {tb*1e3:.1f}ms {10*pairs*hd*nH/tb/1e9:.1f}GF/s", flush=True)
