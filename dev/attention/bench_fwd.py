"""Times a dev forward version against SDPA on Gemma-4 shapes (2 threads): python bench_fwd.py v2 [dtype]"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
import torch, torch.nn.functional as F
import load
torch.set_num_threads(2)
mod = load.load(sys.argv[1])
dt = getattr(torch, sys.argv[2] if len(sys.argv) > 2 else "float32")
tunes = eval(sys.argv[3]) if len(sys.argv) > 3 else [(64, 128, True)]
def bench(f, n=5):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]
shapes = [(512, 512, 8, 1, 256, 512), (2048, 2048, 8, 1, 256, 512), (4096, 4096, 8, 1, 256, 512),
          (1024, 1024, 8, 1, 512, 0), (2048, 2048, 8, 1, 512, 0), (1, 4096, 8, 1, 256, 512), (1, 4096, 8, 1, 512, 0)]
if len(sys.argv) > 4: shapes = [shapes[int(i)] for i in sys.argv[4].split(",")]
for (T, S, nH, nKV, hd, W) in shapes:
    q = torch.randn(1, T, nH, hd, dtype=dt); k = torch.randn(1, S, nKV, hd, dtype=dt); v = torch.randn(1, S, nKV, hd, dtype=dt)
    res = []
    for (bk, tm, po) in tunes:
        res.append(bench(lambda: mod.fwd(q, k, v, None, 1.0, W, bk, tm, po)))
    qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    i = torch.arange(S)[None, :]; p = torch.arange(T)[:, None] + S - T
    msk = (i <= p) & ((i > p - W) if W > 0 else True)
    n = 3 if T >= 2048 else 5
    tsd = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, attn_mask=msk, enable_gqa=True), n)
    tc = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True), n) if T == S else float("nan")
    print(f"T{T} S{S} hd{hd} W{W} {dt}: ours " + " ".join(f"{r*1e3:.2f}" for r in res) + f" ms | sdpa-mask {tsd*1e3:.2f} | sdpa-causal {tc*1e3:.2f}", flush=True)
