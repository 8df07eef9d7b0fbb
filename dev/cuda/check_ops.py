"""Device sanity check of the CUDA kernels of norm, rope, activation, moe (run on the GPU machine).

    GEMMA4_LIB_DIR=build/x PYTHONPATH=python python3 dev/cuda/check_ops.py

For each op, dtype and shape: the CUDA result against the float64 reference (error at most 2x plain
PyTorch's error at that dtype, + 1 ulp; fp32 within 1e-5 relative) and against the CPU kernel;
backward ops too. Prints one line per check and a count of failures. The real tests are tests/ops
with the cuda device; this is the quick look that runs before them.
"""
from __future__ import annotations

import sys
import traceback

import torch

from gemma4.ops import reference as ref

ops = torch.ops.gemma4
fails = []


def err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def check(name, cuda_out, cpu_out, ref_hi, plain_lowp, dtype):
    cuda_out, cpu_out = cuda_out.cpu(), cpu_out.cpu()
    e_cuda, e_cpu = err(cuda_out, ref_hi), err(cpu_out, ref_hi)
    e_plain = err(plain_lowp, ref_hi)
    scale = ref_hi.double().abs().max().item() if ref_hi.numel() else 0.0
    if dtype in (torch.float32, torch.float64):
        tol = (1e-5 if dtype == torch.float32 else 1e-10) * max(scale, 1.0)
    else:
        tol = 2 * e_plain + torch.finfo(dtype).eps * scale
    ok = e_cuda <= tol and bool(torch.isfinite(cuda_out.double()).all() or not torch.isfinite(ref_hi).all())
    print(f"{'ok  ' if ok else 'FAIL'} {name:60s} cuda {e_cuda:.2e} cpu {e_cpu:.2e} plain {e_plain:.2e} tol {tol:.2e}"
          f" cuda-cpu {err(cuda_out, cpu_out):.2e}")
    if not ok:
        fails.append(name)


def run(name, fn):
    try:
        fn()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        fails.append(name + " (raised)")


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def t_rms():
    for dt in DTYPES:
        for shape in [(3, 7), (4, 33), (6, 1536), (2, 3, 4, 256), (70, 1000), (5, 5376), (300, 31), (9, 2048)]:
            for wdt in [None, dt, torch.float32]:
                x = (torch.randn(shape, dtype=torch.float64) * 3).to(dt)
                w = None if wdt is None else (1 + 0.5 * torch.randn(shape[-1], dtype=torch.float64)).to(wdt)
                g = torch.randn(shape, dtype=torch.float64).to(dt)
                xc, wc, gc = x.cuda(), None if w is None else w.cuda(), g.cuda()
                hi = torch.float64
                r = ref.rms_norm(x.to(hi), None if w is None else w.to(hi), 1e-6)
                check(f"rms_norm {dt} {shape} w={wdt}", ops.rms_norm(xc, wc, 1e-6), ops.rms_norm(x, w, 1e-6), r,
                      ref.rms_norm(x, w, 1e-6), dt)
                # backward against autograd through the reference in float64, and in dt for the plain error
                xh = x.to(hi).requires_grad_()
                wh = None if w is None else w.to(hi).requires_grad_()
                gr = torch.autograd.grad(ref.rms_norm(xh, wh, 1e-6), [xh] + ([wh] if wh is not None else []), g.to(hi))
                xl = x.clone().requires_grad_() if dt != torch.float64 else x.clone().requires_grad_()
                wl = None if w is None else w.clone().requires_grad_()
                try:
                    gl = torch.autograd.grad(ref.rms_norm(xl, wl, 1e-6), [xl] + ([wl] if wl is not None else []), g)
                except RuntimeError:
                    gl = gr
                cu = ops.rms_norm_backward(gc, xc, wc, 1e-6)
                cp = ops.rms_norm_backward(g, x, w, 1e-6)
                check(f"rms_norm_backward.x {dt} {shape} w={wdt}", cu[0], cp[0], gr[0], gl[0], dt)
                if w is not None:
                    check(f"rms_norm_backward.w {dt} {shape} w={wdt}", cu[1], cp[1], gr[1], gl[1], wdt)


def t_rope():
    for dt in DTYPES:
        for shape, P in [((2, 5, 3, 256), 2), ((1, 7, 4, 512), 1), ((3, 4, 2, 6), 3), ((2, 3, 8, 64), 1),
                         ((32, 1, 16, 256), 32)]:
            x = torch.randn(shape, dtype=torch.float64).to(dt)
            pos = torch.randint(0, 40000, (P, shape[1]))
            hd = shape[3]
            inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            inv[hd // 4:] = 0.0 if hd >= 8 else inv[hd // 4:]  # proportional RoPE: zeros pass through
            # fp32's reference rounds the angles in fp32 (the op's definition); only fp64 is exact
            hi = x.double() if dt == torch.float64 else x.float()
            r = ref.rope(hi, pos, inv)
            check(f"rope {dt} {shape} P={P}", ops.rope(x.cuda(), pos.cuda(), inv.cuda()), ops.rope(x, pos, inv), r,
                  ref.rope(x, pos, inv), dt)
            rb = ref.rope(hi, -pos, inv)  # the inverse rotation
            check(f"rope_backward {dt} {shape} P={P}", ops.rope_backward(x.cuda(), pos.cuda(), inv.cuda()),
                  ops.rope_backward(x, pos, inv), rb, ref.rope(x, -pos, inv), dt)


def t_act():
    for dt in DTYPES:
        for act in ["gelu_tanh", "silu"]:
            for shape in [(7,), (3, 1000), (64, 2112), (2, 3, 5)]:
                a = (torch.randn(shape, dtype=torch.float64) * 3).to(dt)
                b = torch.randn(shape, dtype=torch.float64).to(dt)
                g = torch.randn(shape, dtype=torch.float64).to(dt)
                r = ref.gated_activation(a.double(), b.double(), act)
                check(f"gated_activation {act} {dt} {shape}", ops.gated_activation(a.cuda(), b.cuda(), act),
                      ops.gated_activation(a, b, act), r, ref.gated_activation(a, b, act), dt)
                ah, bh = a.double().requires_grad_(), b.double().requires_grad_()
                gr = torch.autograd.grad(ref.gated_activation(ah, bh, act), (ah, bh), g.double())
                al, bl = a.float().requires_grad_(), b.float().requires_grad_()
                gl = torch.autograd.grad(ref.gated_activation(al, bl, act).to(dt), (al, bl), g)
                gl = [t.to(dt) for t in gl]
                cu = ops.gated_activation_backward(g.cuda(), a.cuda(), b.cuda(), act)
                cp = ops.gated_activation_backward(g, a, b, act)
                check(f"gated_activation_backward.gate {act} {dt} {shape}", cu[0], cp[0], gr[0], gl[0], dt)
                check(f"gated_activation_backward.up {act} {dt} {shape}", cu[1], cp[1], gr[1], gl[1], dt)


def t_route():
    for dt in DTYPES:
        for N, E, K in [(1, 128, 8), (37, 128, 8), (300, 64, 4), (5, 7, 7), (4, 300, 3)]:
            logits = (torch.randn(N, E, dtype=torch.float64) * 2).to(dt)
            scale = (1 + 0.3 * torch.randn(E)).to(dt)
            wc, ic = ops.moe_route(logits.cuda(), scale.cuda(), K)
            wp, ip = ops.moe_route(logits, scale, K)
            same = torch.equal(ic.cpu(), ip)
            print(f"{'ok  ' if same else 'FAIL'} moe_route indices cuda == cpu {dt} {(N, E, K)}")
            if not same:
                fails.append(f"moe_route indices {dt} {(N, E, K)}")
                continue
            wr, _ = ref.moe_route(logits.double(), scale.double(), K)
            # compare against the reference with the same (CPU-kernel) indices
            p = torch.softmax(logits.double(), -1).gather(1, ip)
            wr = p / p.sum(-1, keepdim=True) * scale.double()[ip]
            check(f"moe_route weights {dt} {(N, E, K)}", wc, wp, wr, wp, torch.float32 if dt != torch.float64 else dt)
            g = torch.randn(N, K, dtype=torch.float64)
            gl_c, gs_c = ops.moe_route_backward(g.to(wc.dtype).cuda(), logits.cuda(), scale.cuda(), ic)
            gl_p, gs_p = ops.moe_route_backward(g.to(wp.dtype), logits, scale, ip)
            lh, sh = logits.double().requires_grad_(), scale.double().requires_grad_()
            pf = torch.softmax(lh, -1).gather(1, ip)
            wf = pf / pf.sum(-1, keepdim=True) * sh[ip]
            gr = torch.autograd.grad(wf, (lh, sh), g)
            check(f"moe_route_backward.logits {dt} {(N, E, K)}", gl_c, gl_p, gr[0], gl_p, dt)
            check(f"moe_route_backward.scale {dt} {(N, E, K)}", gs_c, gs_p, gr[1], gs_p, dt)
    # ties: equal logits pick the lower index first
    logits = torch.zeros(3, 16)
    logits[:, 5] = 1.0
    _, ic = ops.moe_route(logits.cuda(), torch.ones(16).cuda(), 4)
    ok = ic.cpu().tolist() == [[5, 0, 1, 2]] * 3
    print(f"{'ok  ' if ok else 'FAIL'} moe_route ties -> lower index first: {ic.cpu().tolist()[0]}")
    if not ok:
        fails.append("moe_route ties")


def t_experts():
    for dt in DTYPES:
        for N, E, K, H, Im, act in [(1, 16, 4, 64, 48, "gelu_tanh"), (37, 8, 2, 96, 40, "silu"),
                                    (130, 6, 3, 33, 17, "gelu_tanh"), (3, 128, 8, 2816 // 8, 704 // 8, "gelu_tanh")]:
            x = torch.randn(N, H, dtype=torch.float64).to(dt)
            logits = torch.randn(N, E)
            w, idx = ops.moe_route(logits, torch.ones(E), K)
            if N > 1:
                idx[1] = idx[0]  # a repeated routing, and w in x's dtype for half of the cases
            wt = w if dt in (torch.float32, torch.bfloat16) else w.to(dt)
            gu = (torch.randn(E, 2 * Im, H, dtype=torch.float64) / H ** 0.5).to(dt)
            dn = (torch.randn(E, H, Im, dtype=torch.float64) / Im ** 0.5).to(dt)
            go = torch.randn(N, H, dtype=torch.float64).to(dt)
            args_c = [t.cuda() for t in (x, wt, idx, gu, dn)]
            r = ref.moe_experts(x.double(), wt.double(), idx, gu.double(), dn.double(), act)
            plain = ref.moe_experts(x, wt, idx, gu, dn, act) if dt == torch.float64 else \
                _plain_lowp_experts(x, wt, idx, gu, dn, act)
            name = f"{dt} N={N} E={E} K={K} H={H} Im={Im} {act}"
            check(f"moe_experts {name}", ops.moe_experts(*args_c, act), ops.moe_experts(x, wt, idx, gu, dn, act), r,
                  plain, dt)
            hs = [t.double().requires_grad_() for t in (x, wt, gu, dn)]
            gr = torch.autograd.grad(ref.moe_experts(hs[0], hs[1], idx, hs[2], hs[3], act), hs, go.double())
            cu = ops.moe_experts_backward(go.cuda(), *args_c, act)
            cp = ops.moe_experts_backward(go, x, wt, idx, gu, dn, act)
            for i, nm in enumerate(["x", "weights", "gate_up", "down"]):
                # plain low-precision error stand-in: the CPU kernel's (same fp32 accumulation scheme)
                check(f"moe_experts_backward.{nm} {name}", cu[i], cp[i], gr[i], cp[i], cu[i].dtype)


def _plain_lowp_experts(x, w, idx, gu, dn, act):
    """transformers' computation at the low precision: every matmul and activation in x's dtype."""
    Im = dn.shape[-1]
    out = torch.zeros_like(x)
    for e in idx.unique().tolist():
        tok, slot = (idx == e).nonzero(as_tuple=True)
        h = x[tok] @ gu[e].t()
        a = torch.nn.functional.gelu(h[:, :Im], approximate="tanh") if act == "gelu_tanh" else \
            torch.nn.functional.silu(h[:, :Im])
        o = (a * h[:, Im:]) @ dn[e].t()
        out.index_add_(0, tok, (o * w[tok, slot].to(x.dtype)[:, None]).to(x.dtype))
    return out


if __name__ == "__main__":
    torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for name, fn in [("rms_norm", t_rms), ("rope", t_rope), ("activation", t_act), ("moe_route", t_route),
                     ("moe_experts", t_experts)]:
        run(name, fn)
    torch.cuda.synchronize()
    print(f"\n{len(fails)} failures" + ("".join(f"\n  {f}" for f in fails)))
    sys.exit(1 if fails else 0)
