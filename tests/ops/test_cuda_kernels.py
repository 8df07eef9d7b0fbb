"""The CUDA kernels of norm, rope, activation and moe on the inputs that pick each of their code
paths (the generic CPU-vs-CUDA agreement test draws small random shapes and may miss some):
warp-row and block-row rms_norm, unaligned tensors (scalar fallbacks), the MoE forward's GEMV,
tensor-core and SIMT paths, the backward at many tokens; plus determinism and CUDA-graph capture
(no op synchronises with the host). Each result is checked against the CPU kernel: float64 tightly;
float32, bf16 and fp16 by error against the CPU kernel run in float64 on the same values: at most 2x
the CPU kernel's own error plus two units in the last place (float32 too, because outputs that sum
thousands of terms -- grad_w over 3000 rows -- differ between two correct float32 kernels by their
summation order alone, beyond a fixed 1e-5). Where a plain-PyTorch form of the op is given, its error in
the same dtype counts too (the larger of the two, times 2): on one or seven values the CPU kernel's error
is luck (gated_activation, gelu_tanh at u = -2.29: CPU 0.5 ulp, CUDA 3.4, plain PyTorch 1-6 around there).
Skipped without a GPU or a CUDA build.
"""
import pytest
import torch

import gemma4.ops  # noqa: F401  (loads the operator library)
from gemma4.ops import reference as ref
from tests.helpers import tight_tol

ops = torch.ops.gemma4


def _cuda_kernels_built() -> bool:
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("gemma4::rms_norm", "CUDA")


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not _cuda_kernels_built(), reason="needs a GPU and a CUDA build")]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _r(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


def _misaligned(t):
    """The same values in a contiguous tensor whose data starts 1 element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _f64(a):
    return a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a


def _agree(op, args, cuda_args=None, plain=None):
    """Runs op on CPU, on CUDA and on CPU in float64; asserts every output agrees (see the docstring).
    plain: the op in plain PyTorch (same arguments, same outputs), a second witness of the dtype's error."""
    fn = getattr(ops, op)
    want = fn(*args)
    plain_out = plain(*args) if plain is not None else None
    plain_out = plain_out if plain_out is None or isinstance(plain_out, tuple) else (plain_out,)
    got = fn(*(cuda_args if cuda_args is not None else [a.cuda() if isinstance(a, torch.Tensor) else a
                                                         for a in args]))
    exact = fn(*[a if (op.startswith("rope") and i == 2) else _f64(a) for i, a in enumerate(args)])
    want, got, exact = [o if isinstance(o, tuple) else (o,) for o in (want, got, exact)]
    for i, (g, w, e) in enumerate(zip(got, want, exact)):
        g = g.cpu()
        assert g.dtype == w.dtype and g.shape == w.shape, (op, i)
        if not w.is_floating_point():
            assert torch.equal(g, w), (op, i)
        elif w.dtype == torch.float64:
            torch.testing.assert_close(g, w, **tight_tol(w.dtype), msg=lambda m: f"{op} output {i}: {m}")
        else:  # fp32 too: sums over thousands of terms (grad_w over rows) differ by summation order alone
            e = e.double()
            err_cuda = (g.double() - e).abs().max().item() if e.numel() else 0.0
            err_cpu = (w.double() - e).abs().max().item() if e.numel() else 0.0
            err_plain = (plain_out[i].double() - e).abs().max().item() if plain_out and e.numel() else 0.0
            ulp = torch.finfo(w.dtype).eps * (e.abs().max().item() if e.numel() else 0.0)
            assert err_cuda <= 2 * max(err_cpu, err_plain) + 2 * ulp, (
                f"{op} output {i}: CUDA {err_cuda:.3e} vs CPU {err_cpu:.3e}, plain PyTorch {err_plain:.3e}")
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [256, 1000, 1024, 2816, 5376, 7])  # warp rows up to 1K bf16, block rows above
@pytest.mark.parametrize("aligned", [True, False])
def test_rms_norm_layouts(dtype, D, aligned):
    x, g = _r(37, D, dtype=dtype, scale=3.0), _r(37, D, dtype=dtype)
    w = (1 + 0.5 * torch.randn(D, dtype=torch.float64)).to(dtype)
    move = (lambda t: t.cuda()) if aligned else (lambda t: _misaligned(t.cuda()))
    _agree("rms_norm", (x, w, 1e-6), (move(x), w.cuda(), 1e-6))
    _agree("rms_norm", (x, None, 1e-6), (move(x), None, 1e-6))
    _agree("rms_norm_backward", (g, x, w, 1e-6), (move(g), move(x), w.cuda(), 1e-6))
    _agree("rms_norm_backward", (g, x, None, 1e-6), (move(g), move(x), None, 1e-6))


def test_rms_norm_fp32_weight_with_bf16_x_and_many_rows():
    x, g, w = _r(3000, 512, dtype=torch.bfloat16), _r(3000, 512, dtype=torch.bfloat16), torch.rand(512) + 0.5
    _agree("rms_norm", (x, w, 1e-6))
    _agree("rms_norm_backward", (g, x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hd", [6, 64, 256, 512])  # hd/2 = 3 is not a pack: the scalar path
@pytest.mark.parametrize("P", ["batch", "shared"])
def test_rope_paths(dtype, hd, P):
    B, T, H = 3, 5, 4
    x = _r(B, T, H, hd, dtype=dtype)
    pos = torch.randint(0, 30000, (B if P == "batch" else 1, T))
    inv = 10000.0 ** -(torch.arange(hd // 2, dtype=torch.float32) / (hd // 2))
    inv[hd // 4:] = 0.0  # proportional RoPE: those dimensions pass through
    _agree("rope", (x, pos, inv))
    _agree("rope_backward", (x, pos, inv))
    _agree("rope", (x, pos, inv), (_misaligned(x.cuda()), pos.cuda(), inv.cuda()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 4096 + 3])
@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_gated_activation_paths(dtype, n, activation):
    a, b, g = _r(n, dtype=dtype, scale=4.0), _r(n, dtype=dtype), _r(n, dtype=dtype)
    _agree("gated_activation", (a, b, activation), plain=ref.gated_activation)
    _agree("gated_activation_backward", (g, a, b, activation), plain=_plain_gated_backward)
    _agree("gated_activation", (a, b, activation), (_misaligned(a.cuda()), _misaligned(b.cuda()), activation),
           plain=ref.gated_activation)


def _plain_gated_backward(grad_out, gate, up, activation):
    """(grad_gate, grad_up) by autograd through the plain-PyTorch gated activation, in the inputs' dtype."""
    leaves = [gate.clone().requires_grad_(), up.clone().requires_grad_()]
    return torch.autograd.grad(ref.gated_activation(*leaves, activation), leaves, grad_out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,E,K", [(1, 1, 1), (3, 128, 8), (200, 128, 8), (17, 40, 40), (5, 300, 2)])
def test_moe_route_shapes(dtype, N, E, K):
    logits, scale = _r(N, E, dtype=dtype, scale=2.0), torch.rand(E, dtype=torch.float64).to(dtype) + 0.5
    _agree("moe_route", (logits, scale, K))
    w, idx = ops.moe_route(logits, scale, K)
    _agree("moe_route_backward", (_r(N, K, dtype=w.dtype), logits, scale, idx))


def test_moe_route_ties_and_nan_on_cuda():
    logits = torch.zeros(4, 16)
    logits[:, 5] = 1.0
    logits[3, 9] = float("nan")
    w, idx = ops.moe_route(logits.cuda(), torch.ones(16).cuda(), 4)
    want_w, want_idx = ops.moe_route(logits, torch.ones(16), 4)
    assert torch.equal(idx.cpu(), want_idx)
    assert idx[0].tolist() == [5, 0, 1, 2]  # equal probabilities: lower index first


def _experts_args(N, E, K, H, Im, dtype, wdtype=torch.float32):
    logits = torch.randn(N, E, dtype=torch.float64)
    w, idx = ops.moe_route(logits, torch.ones(E, dtype=torch.float64), K)
    return (_r(N, H, dtype=dtype), w.to(wdtype if dtype != torch.float64 else torch.float64), idx,
            _r(E, 2 * Im, H, dtype=dtype, scale=H ** -0.5), _r(E, H, Im, dtype=dtype, scale=Im ** -0.5))


# N <= 64: the GEMV path; more tokens: tensor cores for bf16/fp16 when H and Im are multiples of 8,
# else (fp32/fp64, or H = 100) the SIMT GEMM.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,E,K,H,Im", [(1, 128, 8, 256, 64), (64, 16, 4, 128, 96), (65, 8, 2, 128, 96),
                                        (300, 16, 4, 256, 72), (150, 6, 3, 100, 36), (9, 4, 2, 100, 36)])
@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_moe_experts_paths(dtype, N, E, K, H, Im, activation):
    args = _experts_args(N, E, K, H, Im, dtype)
    _agree("moe_experts", (*args, activation))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,E,K,H,Im", [(5, 8, 2, 64, 40), (200, 16, 4, 128, 72), (70, 6, 3, 100, 36)])
def test_moe_experts_backward_paths(dtype, N, E, K, H, Im):
    x, w, idx, gu, dn = _experts_args(N, E, K, H, Im, dtype, wdtype=dtype if dtype != torch.float64 else torch.float64)
    _agree("moe_experts_backward", (_r(N, H, dtype=dtype), x, w, idx, gu, dn, "gelu_tanh"))


def test_deterministic():
    """Same inputs, same bits: no atomics in any reduction."""
    x, w, idx, gu, dn = [a.cuda() for a in _experts_args(300, 16, 4, 256, 72, torch.bfloat16)]
    go = torch.randn_like(x)
    a = ops.moe_experts_backward(go, x, w, idx, gu, dn, "gelu_tanh")
    b = ops.moe_experts_backward(go, x, w, idx, gu, dn, "gelu_tanh")
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    xn, gn, wn = torch.randn(5000, 256).cuda(), torch.randn(5000, 256).cuda(), torch.rand(256).cuda()
    assert all(torch.equal(p, q) for p, q in zip(ops.rms_norm_backward(gn, xn, wn, 1e-6),
                                                  ops.rms_norm_backward(gn, xn, wn, 1e-6)))


def test_ops_capture_in_a_cuda_graph():
    """No op synchronises with the host: every one can be captured in a CUDA graph (the decode step's
    requirement), and replaying the graph on new inputs gives what an eager call gives."""
    x = torch.randn(4, 2816, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(4, 1, 8, 256, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(4, device="cuda")[:, None] + 100
    inv = 10000.0 ** -(torch.arange(128, device="cuda", dtype=torch.float32) / 128)
    wn = torch.rand(2816, device="cuda") + 0.5
    logits = torch.randn(4, 128, device="cuda")
    gu = 0.02 * torch.randn(128, 2 * 64, 2816, device="cuda", dtype=torch.bfloat16)
    dn = 0.02 * torch.randn(128, 2816, 64, device="cuda", dtype=torch.bfloat16)

    def step():
        h = ops.rms_norm(x, wn, 1e-6)
        r = ops.rope(q, pos, inv)
        w, idx = ops.moe_route(logits, torch.ones(128, device="cuda"), 8)
        y = ops.moe_experts(h, w, idx, gu, dn, "gelu_tanh")
        return ops.gated_activation(y, h, "gelu_tanh"), r

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    for t in (x, q, logits):
        t.copy_(torch.randn_like(t))
    g.replay()
    want = step()
    assert all(torch.equal(a, b) for a, b in zip(out, want))
