"""gemma4::rms_norm and rms_norm_backward against reference.rms_norm (see csrc/norm/)."""
import pytest
import torch

from gemma4.ops import reference as ref
from gemma4.ops.norm import rms_norm
from tests.helpers import assert_lowp_close, assert_same, tight_tol

# Every test runs on each backend present (tests/ops/conftest.py), its inputs created there.
pytestmark = pytest.mark.usefixtures("device")
OPS = ("rms_norm", "rms_norm_backward")

ops = torch.ops.gemma4
LOWP = [torch.bfloat16, torch.float16]

# Edge cases (size-1 dims, odd D, D not a multiple of the vector width 8/4, tails after the 4x unroll),
# Gemma 4 sizes (hidden 1536/2560, head_dim 256/512 over [B,T,nH,hd], PLE [B,T,L,256]) and enough rows
# to split the work over threads.
SHAPES = [(1, 1), (3, 7), (2, 5, 13), (4, 33), (1, 5376), (6, 1536), (2, 3, 4, 256), (2, 3, 2, 512),
          (1, 4, 5, 256), (70, 1000), (300, 31)]


def _x(shape, dtype, scale=None):
    scale = scale if scale is not None else 10 ** torch.empty(()).uniform_(-2, 2).item()
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def _w(d, dtype=torch.float32):
    return (1 + 0.5 * torch.randn(d, dtype=torch.float64)).to(dtype)  # far from all ones


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_forward_full_precision(dtype, shape, with_weight):
    x = _x(shape, dtype)
    w = _w(shape[-1], dtype) if with_weight else None
    eps = 1e-6
    torch.testing.assert_close(rms_norm(x, w, eps), ref.rms_norm(x, w, eps), **tight_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_large_and_tiny_values(dtype):
    x = _x((5, 300), dtype, scale=1.0)
    x[0] *= 1e15  # large values: the sum of squares must stay finite in the accumulation type
    x[1] *= 1e-3  # small values: eps matters
    x[2, :7] = 0.0
    w = _w(300, dtype)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), **tight_tol(dtype))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(3, 7), (4, 33), (6, 1536), (2, 3, 4, 256), (70, 1000)])
@pytest.mark.parametrize("wdtype", ["same", torch.float32, None])
def test_forward_low_precision(dtype, shape, wdtype):
    x = _x(shape, dtype, scale=3.0)
    w = None if wdtype is None else _w(shape[-1], dtype if wdtype == "same" else wdtype)
    ref_hi = ref.rms_norm(x.float(), None if w is None else w.float(), 1e-6)
    # The plain computation is transformers' own: upcast to fp32 inside, cast back (= reference at dtype).
    plain = ref.rms_norm(x, w, 1e-6)
    ours = rms_norm(x, w, 1e-6)
    assert ours.dtype == dtype
    assert_lowp_close(ours, ref_hi, plain)


@pytest.mark.parametrize("xdtype,wdtype", [(torch.float32, torch.bfloat16), (torch.float64, torch.float32),
                                           (torch.float32, torch.float64)])
def test_mixed_weight_dtype_full_precision(xdtype, wdtype):
    x = _x((9, 260), xdtype)
    w = _w(260, wdtype)
    out = rms_norm(x, w, 1e-6)
    assert out.dtype == xdtype
    torch.testing.assert_close(out, ref.rms_norm(x, w, 1e-6), **tight_tol(xdtype))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4, 256), (5, 1536)])
def test_weight_in_x_dtype_read_exactly(dtype, shape):
    """A weight in x's dtype is read widened in registers, an fp32 weight as it is: the same fp32 values, so
    the same bits (what the decode step relies on to skip a per-call weight conversion)."""
    x, w = _x(shape, dtype, scale=3.0), _w(shape[-1], dtype)
    assert torch.equal(rms_norm(x, w, 1e-6), rms_norm(x, w.float(), 1e-6))


def test_threads_agree():
    """The split over threads must cover every row once: 1 and 2 threads give identical bits (grad_w
    only up to the order of its per-thread partial sums)."""
    x, w, g = _x((300, 520), torch.bfloat16), _w(520), torch.randn(300, 520).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.rms_norm(x, w, 1e-6), ops.rms_norm_backward(g, x, w, 1e-6)
        torch.set_num_threads(2)
        two = ops.rms_norm(x, w, 1e-6), ops.rms_norm_backward(g, x, w, 1e-6)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1][0], two[1][0])
    torch.testing.assert_close(one[1][1], two[1][1], rtol=1e-5, atol=1e-5 * 300)


def test_empty_rows():
    x = torch.randn(0, 3, 64)
    assert rms_norm(x, _w(64)).shape == (0, 3, 64)


def _grads(fn, x, w, g):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    fn(x, w).backward(g)
    return x.grad, (None if w is None else w.grad)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 13), (6, 1536), (2, 3, 4, 256), (70, 1000), (300, 31)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_backward_float32(shape, with_weight):
    x = _x(shape, torch.float32)
    w = _w(shape[-1]) if with_weight else None
    g = torch.randn(shape)
    gx, gw = _grads(lambda a, b: rms_norm(a, b, 1e-6), x, w, g)
    rx, rw = _grads(lambda a, b: ref.rms_norm(a, b, 1e-6), x, w, g)
    # grad_x = r g w - x r^3 mean(g w x): the two terms cancel (exactly so for D = 1), so the
    # rounding error is relative to the size of the terms, |r g w|, not to the result.
    r = x.double().pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
    term = (r * g * (1 if w is None else w)).abs().max().item()
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5 * max(term, 1.0))
    if with_weight:
        # grad_w sums over all rows: compare relative to the size of the terms summed.
        torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-6 * shape[0] * (g.abs().max().item() + 1))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("wdtype", ["same", torch.float32])
def test_backward_low_precision(dtype, wdtype):
    x = _x((40, 520), dtype, scale=2.0)
    w = _w(520, dtype if wdtype == "same" else wdtype)
    g = torch.randn(40, 520).to(dtype)
    gx, gw = _grads(lambda a, b: rms_norm(a, b, 1e-6), x, w, g)
    hx, hw = _grads(lambda a, b: ref.rms_norm(a, b, 1e-6), x.float(), w.float(), g.float())
    px, pw = _grads(lambda a, b: ref.rms_norm(a, b, 1e-6), x, w, g)  # plain PyTorch at dtype
    assert gx.dtype == dtype and gw.dtype == w.dtype
    assert_lowp_close(gx, hx, px)
    if w.dtype == torch.float32:  # an fp32 weight gets an fp32 gradient: only summation order differs
        torch.testing.assert_close(gw, hw, rtol=1e-5, atol=1e-6 * 40 * (g.abs().max().item() + 1))
    else:
        assert_lowp_close(gw, hw, pw)


def test_gradcheck_float64():
    x = _x((3, 2, 11), torch.float64, scale=1.0).requires_grad_()
    w = _w(11, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda a: rms_norm(a, None, 1e-5), (x,))


def test_opcheck():
    x = _x((4, 24), torch.float32).requires_grad_()
    w = _w(24).requires_grad_()
    torch.library.opcheck(ops.rms_norm, (x, w, 1e-6))
    torch.library.opcheck(ops.rms_norm, (x, None, 1e-6))
    g = torch.randn(4, 24)
    torch.library.opcheck(ops.rms_norm_backward, (g, x.detach(), w.detach(), 1e-6))
    torch.library.opcheck(ops.rms_norm_backward, (g, x.detach(), None, 1e-6))


def test_torch_compile_fullgraph():
    x = _x((2, 5, 64), torch.float32).requires_grad_()
    w = _w(64).requires_grad_()
    g = torch.randn(2, 5, 64)
    compiled = torch.compile(lambda a, b: rms_norm(a, b, 1e-6) * 2.0, fullgraph=True)
    out = compiled(x, w)
    out.backward(g)
    cx, cw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    (rms_norm(x, w, 1e-6) * 2.0).backward(g)
    torch.testing.assert_close(out, rms_norm(x, w, 1e-6) * 2.0)
    torch.testing.assert_close(cx, x.grad)
    torch.testing.assert_close(cw, w.grad)


def test_bad_inputs():
    x = torch.randn(4, 16)
    w = torch.randn(16)
    with pytest.raises(RuntimeError, match="x must be float32"):
        ops.rms_norm(x.to(torch.int32), w, 1e-6)
    with pytest.raises(RuntimeError, match="weight must have x.size\\(-1\\)"):
        ops.rms_norm(x, torch.randn(15), 1e-6)
    with pytest.raises(RuntimeError, match="weight must have 1 dimensions"):
        ops.rms_norm(x, torch.randn(1, 16), 1e-6)
    with pytest.raises(RuntimeError, match="weight must be float32"):
        ops.rms_norm(x, torch.ones(16, dtype=torch.int64), 1e-6)
    with pytest.raises(RuntimeError, match="x must have at least 1 dimension"):
        ops.rms_norm(torch.tensor(1.5), None, 1e-6)
    with pytest.raises(RuntimeError, match="eps must be"):
        ops.rms_norm(x, w, -1.0)
    with pytest.raises(RuntimeError, match="grad_out must have x's shape"):
        ops.rms_norm_backward(torch.randn(4, 15), x, w, 1e-6)
    with pytest.raises(RuntimeError, match="grad_out must have x's dtype"):
        ops.rms_norm_backward(torch.randn(4, 16, dtype=torch.float64), x, w, 1e-6)
    # Strided inputs give the same bits as contiguous ones (the op copies them in C++).
    xt, wt, gt = torch.randn(16, 4).t(), torch.randn(16, 2)[:, 0], torch.randn(16, 4).t()
    assert_same(ops.rms_norm(xt, wt, 1e-6), ops.rms_norm(xt.contiguous(), wt.contiguous(), 1e-6))
    assert_same(ops.rms_norm_backward(gt, xt, wt, 1e-6),
                ops.rms_norm_backward(gt.contiguous(), xt.contiguous(), wt.contiguous(), 1e-6))
    torch.testing.assert_close(rms_norm(xt, w), ref.rms_norm(xt, w, 1e-6))
