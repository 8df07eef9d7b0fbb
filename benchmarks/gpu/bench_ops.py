"""Our CUDA operators against their plain-PyTorch references on the GPU, same run, same inputs.

    python benchmarks/gpu/bench_ops.py                 # every case; writes benchmarks/results/ops_gpu-<gpu>.json/.png
    python benchmarks/gpu/bench_ops.py --filter moe --name ops_gpu_moe   # only cases whose op/case contain "moe"
    python benchmarks/gpu/bench_ops.py --compile       # also torch.compile'd references (slow to compile)

Each case times gemma4's op and the baseline a user would otherwise write (python/gemma4/ops/reference.py
in eager mode: what transformers computes) with CUDA events: the GPU time per call from replays of a
CUDA graph holding one call per input set (ours_ms, eager_ms; an op that synchronises with the host
cannot be captured and is timed per call instead), and the time per call launched from Python
(*_launch_ms: the host's launch cost included, which dominates small ops). Inputs are rotated over
several copies so the L2 cache (50 MB) does not hold them. Memory-bound ops
report GB/s = the bytes they must move (each input read once, each output written once) / time, and
the fraction of the copy bandwidth (--bandwidth, 4.2 TB/s measured on an H200 here); the MoE experts
report the bytes of the expert weights they must read. Shapes are Gemma 4's (26B-A4B: hidden 2816,
128 experts, top 8, expert width 704; head_dim 256), bfloat16.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.common import gpu_info, graph_time_ms, write_gpu_results  # noqa: E402

DT = torch.bfloat16


def cuda_time_ms(fn, inputs: list, warmup: int = 3, reps: int = 30) -> float:
    """Median ms of fn(*inputs[i % len(inputs)]) timed with CUDA events, one event pair per call.
    Includes the host's cost of launching when that exceeds the GPU time (small ops)."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*inputs[i % len(inputs)])
        b.record()
        times.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in times)


def graph_ms(fn, inputs: list, reps: int = 20) -> float | None:
    """GPU time per call, one call per input set in a CUDA graph (common.graph_time_ms); None when fn
    cannot be captured (it synchronises with the host)."""
    try:
        return graph_time_ms([lambda inp=inp: fn(*inp) for inp in inputs], reps)
    except Exception:  # noqa: BLE001  (host syncs inside fn: not capturable)
        torch.cuda.synchronize()
        return None


def copies(make, nbytes: int) -> list:
    """Enough independent input sets to exceed ~200 MB together (so timing reads DRAM, not L2)."""
    n = max(1, min(8, (200 << 20) // max(nbytes, 1) + 1))
    return [make() for _ in range(n)]


def cases(compile_refs: bool):
    import gemma4.ops as g
    from gemma4.ops import reference as ref

    dev = "cuda"

    def rnd(*shape, dtype=DT):
        return torch.randn(*shape, device=dev, dtype=torch.float32).to(dtype)

    def maybe_compiled(fn):
        return torch.compile(fn, dynamic=False) if compile_refs else None

    # rms_norm: hidden [T, 2816] and q-norm [1, T, 16, 256]
    for name, shape in [("hidden 4096x2816", (4096, 2816)), ("q-norm 1x4096x16x256", (1, 4096, 16, 256)),
                        ("decode 1x2816", (1, 2816))]:
        d = shape[-1]
        n = 1
        for s in shape:
            n *= s
        mk = lambda shape=shape, d=d: (rnd(*shape), 1 + 0.1 * rnd(d))  # noqa: E731
        yield dict(op="rms_norm", case=name, bytes=2 * n * 2, inputs=copies(mk, 2 * n * 2),
                   ours=lambda x, w: g.rms_norm(x, w, 1e-6), base=lambda x, w: ref.rms_norm(x, w, 1e-6),
                   compiled=maybe_compiled(lambda x, w: ref.rms_norm(x, w, 1e-6)))
        if name != "decode 1x2816":
            mkb = lambda shape=shape, d=d: (rnd(*shape), rnd(*shape), 1 + 0.1 * rnd(d))  # noqa: E731
            ops = torch.ops.gemma4

            def base_bwd(go, x, w):
                x = x.detach().requires_grad_()
                w = w.detach().requires_grad_()
                return torch.autograd.grad(ref.rms_norm(x, w, 1e-6), (x, w), go)

            yield dict(op="rms_norm_backward", case=name, bytes=3 * n * 2, inputs=copies(mkb, 3 * n * 2),
                       ours=lambda go, x, w: ops.rms_norm_backward(go, x, w, 1e-6), base=base_bwd, compiled=None)

    # rope on [B, T, nH, 256]
    for name, shape in [("q 1x4096x16x256", (1, 4096, 16, 256)), ("decode 32x1x16x256", (32, 1, 16, 256))]:
        n = shape[0] * shape[1] * shape[2] * shape[3]
        inv = 1.0 / (10000 ** (torch.arange(0, 256, 2, device=dev).float() / 256))

        def mk(shape=shape):
            return (rnd(*shape), torch.arange(shape[1], device=dev).expand(shape[0], -1).contiguous() + 7, inv)

        yield dict(op="rope", case=name, bytes=2 * n * 2, inputs=copies(mk, 2 * n * 2), ours=g.rope, base=ref.rope,
                   compiled=maybe_compiled(ref.rope))

    # gated activation (GeGLU) on [T, I]
    for name, shape in [("4096x16384", (4096, 16384)), ("decode 1x16384", (1, 16384))]:
        n = shape[0] * shape[1]
        mk = lambda shape=shape: (rnd(*shape), rnd(*shape))  # noqa: E731
        yield dict(op="gated_activation", case=name, bytes=3 * n * 2, inputs=copies(mk, 3 * n * 2),
                   ours=lambda a, b: g.gated_activation(a, b, "gelu_tanh"),
                   base=lambda a, b: ref.gated_activation(a, b, "gelu_tanh"),
                   compiled=maybe_compiled(lambda a, b: ref.gated_activation(a, b, "gelu_tanh")))
        if name == "4096x16384":
            mkb = lambda shape=shape: (rnd(*shape), rnd(*shape), rnd(*shape))  # noqa: E731

            def base_gbwd(go, a, b):
                a = a.detach().requires_grad_()
                b = b.detach().requires_grad_()
                return torch.autograd.grad(ref.gated_activation(a, b, "gelu_tanh"), (a, b), go)

            yield dict(op="gated_activation_backward", case=name, bytes=5 * n * 2, inputs=copies(mkb, 5 * n * 2),
                       ours=lambda go, a, b: torch.ops.gemma4.gated_activation_backward(go, a, b, "gelu_tanh"),
                       base=base_gbwd, compiled=None)

    # MoE routing: logits [T, 128], top 8
    for T in (4096, 1):
        mk = lambda T=T: (rnd(T, 128), 1 + 0.1 * rnd(128))  # noqa: E731
        yield dict(op="moe_route", case=f"{T}x128 top8", bytes=T * 128 * 2 + T * 8 * 12,
                   inputs=copies(mk, T * 128 * 2), ours=lambda l, s: g.moe_route(l, s, 8),
                   base=lambda l, s: ref.moe_route(l, s, 8), compiled=None)

    # MoE experts, 26B-A4B shapes: E=128, K=8, H=2816, Im=704
    E, K, H, Im = 128, 8, 2816, 704
    expert_bytes = 3 * H * Im * 2
    gate_up, down = 0.02 * rnd(E, 2 * Im, H), 0.02 * rnd(E, H, Im)
    for N in (1, 8, 512):
        def mk(N=N):
            logits = torch.randn(N, E, device=dev)
            w, idx = g.moe_route(logits, torch.ones(E, device=dev), K)
            return rnd(N, H), w, idx

        sample = mk()[2]
        distinct = int(sample.unique().numel())
        # weights are shared by every input set: time with 1 set (the expert weights exceed L2 anyway)
        yield dict(op="moe_experts", case=f"N={N} (E=128, top8, 2816x704)", bytes=distinct * expert_bytes,
                   inputs=[mk() for _ in range(3)],
                   ours=lambda x, w, i: g.moe_experts(x, w, i, gate_up, down, "gelu_tanh"),
                   base=lambda x, w, i: ref.moe_experts(x, w, i, gate_up, down, "gelu_tanh"), compiled=None,
                   flops=2 * N * K * 3 * H * Im, base_syncs=True)
    # The same layer on int4 groups of 32 (bf16 scales): gemma4::moe_experts_quant's grouped GEMVs (up to 128
    # tokens), and the composed host loop over qgemm it replaced there (reached by a down bank off a 16-byte
    # boundary; each of its qgemm calls then copies its expert's down slice, 1 MB, onto one), then at 512 tokens
    # the experts' grouped GEMMs on the banks dequantized to bf16 (the composed loop before), against the
    # reference's per-expert dequantize-and-multiply. bytes: the chosen experts' packed weights.
    q_gu = torch.randint(0, 256, (E, 2 * Im, H // 2), dtype=torch.uint8, device=dev)
    q_dn = torch.randint(0, 256, (E, H, Im // 2), dtype=torch.uint8, device=dev)
    q_dn_shifted = torch.empty(q_dn.numel() + 1, dtype=torch.uint8, device=dev)[1:].view_as(q_dn).copy_(q_dn)
    s_gu, s_dn = 0.02 * rnd(E, 2 * Im, H // 32), 0.02 * rnd(E, H, Im // 32)
    q_expert_bytes = 3 * H * Im // 2 + 3 * H * Im // 32 * 2
    for N in (1, 8, 64, 512):
        def mkq(N=N):
            logits = torch.randn(N, E, device=dev)
            w, idx = g.moe_route(logits, torch.ones(E, device=dev), K)
            return rnd(N, H), w, idx

        distinct = int(mkq()[2].unique().numel())
        for label, dn in (("", q_dn), (" composed (before)", q_dn_shifted))[:1 if N > 64 else 2]:
            banks = (q_gu, s_gu, dn, s_dn)
            yield dict(op="moe_experts_quant" + label, case=f"N={N} (E=128, top8, 2816x704, int4 g32)",
                       bytes=distinct * q_expert_bytes, inputs=[mkq() for _ in range(3)],
                       ours=lambda x, w, i, banks=banks: g.moe_experts_quant(x, w, i, *banks, "gelu_tanh"),
                       base=lambda x, w, i, banks=banks: ref.moe_experts_quant(x, w, i, *banks, "gelu_tanh"),
                       compiled=None, flops=2 * N * K * 3 * H * Im, base_syncs=True)
    banks = (q_gu, s_gu, q_dn, s_dn)
    # Its backward (grad_x, grad_weights; the banks are frozen) at 512 tokens: moe_experts' backward on the banks
    # dequantized to bf16, against the reference's autograd (eager per-expert dequantize-and-multiply).
    def base_qbwd(go, x, w, i):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        return torch.autograd.grad(ref.moe_experts_quant(x, w, i, *banks, "gelu_tanh"), (x, w), go)

    def mkqb(N=512):
        return (rnd(N, H), *mkq(N))

    yield dict(op="moe_experts_quant_backward", case="N=512 (E=128, top8, 2816x704, int4 g32)",
               bytes=E * q_expert_bytes, inputs=[mkqb() for _ in range(2)],
               ours=lambda go, x, w, i: torch.ops.gemma4.moe_experts_quant_backward(go, x, w, i, *banks, "gelu_tanh"),
               base=base_qbwd, compiled=None, flops=2 * 512 * K * 5 * H * Im, base_syncs=True)  # gu again, dh, grad_x
    N = 512

    def mkb():
        logits = torch.randn(N, E, device=dev)
        w, idx = g.moe_route(logits, torch.ones(E, device=dev), K)
        return rnd(N, H), rnd(N, H), w, idx

    def base_ebwd(go, x, w, i):
        x = x.detach().requires_grad_()
        gu = gate_up.detach().requires_grad_()
        dn = down.detach().requires_grad_()
        return torch.autograd.grad(ref.moe_experts(x, w, i, gu, dn, "gelu_tanh"), (x, gu, dn), go)

    yield dict(op="moe_experts_backward", case=f"N={N} (E=128, top8, 2816x704)", bytes=2 * E * expert_bytes,
               inputs=[mkb() for _ in range(2)],
               ours=lambda go, x, w, i: torch.ops.gemma4.moe_experts_backward(go, x, w, i, gate_up, down, "gelu_tanh"),
               base=base_ebwd, compiled=None, flops=3 * 2 * N * K * 3 * H * Im, base_syncs=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd references")
    ap.add_argument("--name", default="ops_gpu", help="results file name (a --filter run: its own name)")
    ap.add_argument("--bandwidth", type=float, default=4.2e12, help="copy bandwidth in bytes/s (H200: 4.2e12)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    info = gpu_info()
    print(f"# {info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}; bf16; bandwidth {args.bandwidth / 1e12:.1f} TB/s")
    rows = []
    for c in cases(args.compile):
        if args.filter not in c["op"] + " " + c["case"]:
            continue
        row = {"op": c["op"], "case": c["case"], "bytes": c["bytes"]}
        try:
            with torch.no_grad() if "backward" not in c["op"] else torch.enable_grad():
                # ours_ms / base_ms: GPU time (CUDA graph replay) where the op can be captured;
                # *_launch_ms: per call from Python, host launch cost included.
                row["ours_launch_ms"] = cuda_time_ms(c["ours"], c["inputs"])
                row["ours_ms"] = graph_ms(c["ours"], c["inputs"]) or row["ours_launch_ms"]
                row["eager_launch_ms"] = cuda_time_ms(c["base"], c["inputs"], reps=10)
                # (a baseline that syncs with the host -- the reference's per-expert loop -- is not captured)
                row["eager_ms"] = (None if c.get("base_syncs") else graph_ms(c["base"], c["inputs"], reps=5)) \
                    or row["eager_launch_ms"]
                if c.get("compiled") is not None:
                    row["compiled_ms"] = cuda_time_ms(c["compiled"], c["inputs"])
        except Exception as e:  # noqa: BLE001  (one failing case must not stop the others)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"{c['op']:26s} {c['case']:32s} ERROR {row['error']}")
            rows.append(row)
            continue
        row["ours_GBps"] = c["bytes"] / row["ours_ms"] / 1e6
        row["fraction_of_bandwidth"] = row["ours_GBps"] * 1e9 / args.bandwidth
        row["speedup_vs_eager"] = row["eager_ms"] / row["ours_ms"]
        if "flops" in c:
            row["ours_TFLOPs"] = c["flops"] / row["ours_ms"] / 1e9
        rows.append(row)
        comp = f" compiled {row['compiled_ms']:8.3f} ms" if "compiled_ms" in row else ""
        print(f"{c['op']:26s} {c['case']:32s} ours {row['ours_ms']:8.3f} ms ({row['ours_GBps']:7.0f} GB/s, "
              f"{100 * row['fraction_of_bandwidth']:5.1f}% bw; launched {row['ours_launch_ms']:7.3f})  "
              f"eager {row['eager_ms']:8.3f} ms (launched {row['eager_launch_ms']:7.3f})  "
              f"x{row['speedup_vs_eager']:6.2f}{comp}")

    def plot(plt):
        ok = [r for r in rows if "ours_ms" in r]
        labels = [f"{r['op']}  {r['case']}" for r in ok]
        y = list(range(len(ok)))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.38 * len(ok) + 1.8), sharey=True)
        ax1.barh(y, [r["speedup_vs_eager"] for r in ok], color="tab:blue")
        ax1.axvline(1, color="k", lw=0.8)
        ax1.set_xscale("log")
        ax1.set_xlabel("speedup vs eager PyTorch reference (GPU time)")
        ax1.set_yticks(y, labels, fontsize=7)
        ax1.invert_yaxis()
        ax2.barh(y, [100 * r["fraction_of_bandwidth"] for r in ok], color="tab:orange")
        ax2.set_xlim(0, 100)
        ax2.set_xlabel(f"ours: % of the {args.bandwidth / 1e12:.1f} TB/s copy bandwidth (bytes it must move)")
        fig.suptitle(f"gemma4 CUDA ops, bf16, {info['gpu']}")
        fig.tight_layout()
        return fig

    write_gpu_results(args.name, rows, info, plot=plot, extra={"bandwidth_Bps": args.bandwidth})


if __name__ == "__main__":
    main()
