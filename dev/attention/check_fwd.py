"""Checks a dev forward version against reference.attention on assorted shapes: python check_fwd.py v2"""
import sys, os, itertools
sys.path.insert(0, os.path.dirname(__file__)); sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../python"))
import torch
import importlib.util
spec = importlib.util.spec_from_file_location("reference", os.path.join(os.path.dirname(__file__), "../../python/gemma4/ops/reference.py"))
ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
import load
mod = load.load(sys.argv[1] if len(sys.argv) > 1 else "v2")
torch.manual_seed(0)
cases = [  # B, T, S, nH, nKV, hd, window, mask
    (1, 1, 700, 8, 1, 256, 0, False), (2, 1, 700, 8, 2, 64, 512, True), (1, 37, 37, 4, 4, 72, 0, False),
    (2, 50, 80, 6, 2, 128, 16, True), (1, 200, 200, 8, 1, 256, 64, False), (1, 130, 130, 2, 1, 512, 1, False),
    (3, 17, 17, 8, 8, 64, 200, True), (1, 300, 300, 3, 1, 40, 0, True), (1, 5, 9, 12, 3, 36, 3, True),
]
for dt in [torch.float64, torch.float32, torch.bfloat16]:
  for (B, T, S, nH, nKV, hd, W, msk) in cases:
    q = torch.randn(B, T, nH, hd, dtype=dt); k = torch.randn(B, S, nKV, hd, dtype=dt); v = torch.randn(B, S, nKV, hd, dtype=dt)
    km = None
    if msk:
        km = torch.ones(B, S, dtype=torch.bool)
        for b in range(B): km[b, : (b * 7 + 3) % S] = False
        if B > 1: km[1, : S - T + 2] = False   # first rows of batch 1 fully masked
    sc = 0.7
    for tm, bk in [(128, 64), (64, 32), (32, 48)]:
        o, l = mod.fwd(q, k, v, km, sc, W, bk, tm, True)
        ro, rl = ref.attention(q.double(), k.double(), v.double(), km, sc, W)
        e = (o.double() - ro).abs().max().item()
        fin = torch.isfinite(rl)
        el = (l.double()[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
        assert torch.equal(torch.isfinite(l), fin), "lse -inf pattern"
        print(f"{str(dt):15s} B{B} T{T} S{S} nH{nH} nKV{nKV} hd{hd} W{W} m{int(msk)} tm{tm} bk{bk}: out {e:.2e} lse {el:.2e}")
