"""gemma4::attention on the GPU against torch SDPA, same run (bf16, batch 1, Gemma 4 head shapes).

* prefill forward, causal S=T=8192: ours vs SDPA's best backend (cuDNN / flash / efficient, each
  tried; a backend that refuses the shape is skipped) -> TFLOP/s (visible query-key pairs x 4 x hd);
* sliding window 1024: ours vs SDPA with an explicit [T, S] mask (what a user of SDPA must pass);
* forward + backward, causal: TFLOP/s on the 3.5x-forward convention (issue 9);
* decode, one query row per head against a 32k cache (a [B, nKV, Tmax, hd] buffer read through a view
  with a key mask, as generate does): GB/s of K/V read, timed as CUDA-graph replays (device time, as in a
  captured decode step; both sides), the eager time (host launch overhead included) recorded beside.

Timing: CUDA events around each call, median of repeats after warm-up; decode rotates over 4 caches
so L2 does not hold the 64 MB being read. Writes benchmarks/results/attention_gpu-<gpu>.json and .png.
Usage (repo root, CUDA build): GEMMA4_LIB_DIR=... PYTHONPATH=python:. python3 benchmarks/gpu/bench_attention.py
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import gemma4._native  # noqa: F401
from benchmarks.gpu.common import cuda_time_ms as cuda_time, gpu_info, graph_time_ms, write_gpu_results

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def visible_pairs(T: int, S: int, window: int) -> int:
    off = S - T
    return sum(min(off + t + 1, window) if window > 0 else off + t + 1 for t in range(T))


def sdpa_best(q, k, v, mask, causal, backward):
    """Fastest SDPA backend on [B, T, nH, hd] / [B, S, nKV, hd] inputs: (name, ms) or (None, None)."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, heads, len, hd]
    G = q.shape[2] // k.shape[2]
    best = (None, None)
    for name, backend in BACKENDS.items():
        for gqa in ("native", "expanded"):
            kk, vv = (kt, vt) if gqa == "native" else (kt.repeat_interleave(G, 1), vt.repeat_interleave(G, 1))
            kw = dict(attn_mask=mask, is_causal=causal and mask is None, enable_gqa=gqa == "native" and G > 1)

            def call():
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(qt, kk, vv, **kw)
                if backward:
                    out.backward(go_t)
                return out

            go_t = torch.randn_like(qt) if backward else None
            try:
                call()
                torch.cuda.synchronize()
            except RuntimeError:
                continue
            ms = cuda_time(call)
            if best[1] is None or ms < best[1]:
                best = (f"{name}{'' if gqa == 'native' else '+expand'}", ms)
            break  # the native GQA call worked: no need for the expanded one
    return best


def prefill_rows(hd, nH, nKV, T, window, backward):
    S = T
    dt = torch.bfloat16
    need = backward
    q = torch.randn(1, T, nH, hd, dtype=dt, device="cuda", requires_grad=need)
    k = torch.randn(1, S, nKV, hd, dtype=dt, device="cuda", requires_grad=need)
    v = torch.randn(1, S, nKV, hd, dtype=dt, device="cuda", requires_grad=need)
    scale = 1.0 / hd ** 0.5
    go = torch.randn(1, T, nH, hd, dtype=dt, device="cuda")

    def ours():
        out, lse = torch.ops.gemma4.attention(q, k, v, None, scale, window)
        if backward:
            torch.ops.gemma4.attention_backward(go, q, k, v, out, lse, None, scale, window)

    ms = cuda_time(ours)
    flops = 4 * hd * visible_pairs(T, S, window) * nH * (3.5 if backward else 1.0)
    if window > 0:
        i = torch.arange(T, device="cuda")[:, None]
        j = torch.arange(S, device="cuda")[None, :]
        mask = (j <= i) & (j > i - window)
        base_name, base_ms = sdpa_best(q, k, v, mask, False, backward)
        base_label = "SDPA + sliding mask"
    else:
        base_name, base_ms = sdpa_best(q, k, v, None, True, backward)
        base_label = "SDPA is_causal"
    case = f"{'fwd+bwd' if backward else 'fwd'} hd{hd} H{nH}/{nKV} T{T}" + (f" W{window}" if window else " causal")
    row = {"case": case, "kind": "fwd+bwd" if backward else "fwd", "hd": hd, "nH": nH, "nKV": nKV, "T": T,
           "S": S, "window": window, "ours_ms": ms, "ours_tflops": flops / ms / 1e9,
           "baseline": base_label, "baseline_backend": base_name, "baseline_ms": base_ms,
           "baseline_tflops": flops / base_ms / 1e9 if base_ms else None,
           "speedup": base_ms / ms if base_ms else None}
    return row


def decode_row(hd, nH, nKV, S, B=1, caches=4):
    dt = torch.bfloat16
    Tmax = S
    ks = [torch.randn(B, nKV, Tmax, hd, dtype=dt, device="cuda") for _ in range(caches)]
    vs = [torch.randn(B, nKV, Tmax, hd, dtype=dt, device="cuda") for _ in range(caches)]
    km = torch.ones(B, S, dtype=torch.bool, device="cuda")
    q = torch.randn(B, 1, nH, hd, dtype=dt, device="cuda")
    it = [0]

    def ours():
        i = it[0] = (it[0] + 1) % caches
        torch.ops.gemma4.attention(q, ks[i][:, :, :S].transpose(1, 2), vs[i][:, :, :S].transpose(1, 2), km, 1.0, 0)

    eager_ms = cuda_time(ours, reps=50)
    try:
        ms = graph_time_ms([ours] * 8)  # a decode step's device time, as a captured generate step runs it
    except RuntimeError as e:  # a capture failure must not lose the eager numbers
        print(f"graph capture failed ({e}); decode timed eagerly")
        ms = eager_ms
    nbytes = 2 * B * S * nKV * hd * 2

    def sdpa():  # transformers' decode call: [B, nH, 1, hd] against the cache, a boolean mask, GQA
        i = it[0] = (it[0] + 1) % caches
        return F.scaled_dot_product_attention(q.transpose(1, 2), ks[i], vs[i], attn_mask=km[:, None, None, :],
                                              enable_gqa=nH != nKV, scale=1.0)

    try:
        base_ms = graph_time_ms([sdpa] * 8)
    except RuntimeError:
        try:
            base_ms = cuda_time(sdpa, reps=50)
        except RuntimeError:
            base_ms = None
    return {"case": f"decode hd{hd} H{nH}/{nKV} S{S}", "kind": "decode", "hd": hd, "nH": nH, "nKV": nKV, "T": 1,
            "S": S, "window": 0, "ours_ms": ms, "ours_gbps": nbytes / ms / 1e6, "ours_eager_ms": eager_ms,
            "ours_eager_gbps": nbytes / eager_ms / 1e6, "baseline": "SDPA + mask",
            "baseline_ms": base_ms, "baseline_gbps": nbytes / base_ms / 1e6 if base_ms else None,
            "speedup": base_ms / ms if base_ms else None}


def plot(rows):
    def draw(plt):
        pre = [r for r in rows if r["kind"] != "decode"]
        dec = [r for r in rows if r["kind"] == "decode"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [len(pre), max(1, len(dec))]})
        x = range(len(pre))
        a1.bar([i - 0.2 for i in x], [r["ours_tflops"] for r in pre], 0.4, label="gemma4")
        a1.bar([i + 0.2 for i in x], [r["baseline_tflops"] or 0 for r in pre], 0.4,
               label="SDPA best backend (masked for windows)")
        a1.set_xticks(list(x), [r["case"] for r in pre], rotation=30, ha="right", fontsize=8)
        a1.set_ylabel("TFLOP/s (bf16)")
        a1.legend()
        x = range(len(dec))
        a2.bar([i - 0.2 for i in x], [r["ours_gbps"] for r in dec], 0.4, label="gemma4")
        a2.bar([i + 0.2 for i in x], [r["baseline_gbps"] or 0 for r in dec], 0.4, label="SDPA + mask")
        a2.set_xticks(list(x), [r["case"] for r in dec], rotation=30, ha="right", fontsize=8)
        a2.set_ylabel("K/V GB/s")
        a2.legend()
        fig.suptitle(f"gemma4 attention vs SDPA, bf16, batch 1, {torch.cuda.get_device_name()}")
        fig.tight_layout()
        return fig
    return draw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    args = ap.parse_args()
    info = gpu_info()
    rows = []
    cases = [(256, 16, 8, 8192, 0, False), (512, 16, 2, 8192, 0, False), (256, 16, 8, 8192, 1024, False),
             (512, 16, 2, 8192, 1024, False), (256, 16, 8, 8192, 0, True), (512, 16, 2, 8192, 0, True)]
    decodes = [(512, 8, 1, 32768), (512, 32, 4, 32768), (256, 8, 1, 32768), (256, 16, 8, 32768)]
    if args.quick:
        cases, decodes = cases[:2], decodes[:1]
    for c in cases:
        rows.append(prefill_rows(*c))
        r = rows[-1]
        print(f"{r['case']:<36} ours {r['ours_tflops']:7.1f} TFLOP/s  {r['baseline']} [{r['baseline_backend']}] "
              f"{(r['baseline_tflops'] or 0):7.1f}  x{(r['speedup'] or 0):.2f}", flush=True)
    for d in decodes:
        rows.append(decode_row(*d))
        r = rows[-1]
        print(f"{r['case']:<36} ours {r['ours_gbps']:7.0f} GB/s (eager {r['ours_eager_gbps']:5.0f})  SDPA {(r['baseline_gbps'] or 0):7.0f} GB/s  "
              f"x{(r['speedup'] or 0):.1f}", flush=True)
    write_gpu_results("attention_gpu", rows, info, plot=plot(rows))


if __name__ == "__main__":
    main()
