"""gemma4::rope and rope_backward against reference.rope (see csrc/rope/)."""
import pytest
import torch

from gemma4.ops import reference as ref
from gemma4.ops.rope import rope
from tests.helpers import assert_lowp_close, assert_same, tight_tol

# Every test runs on each backend present (tests/ops/conftest.py), its inputs created there.
pytestmark = pytest.mark.usefixtures("device")
OPS = ("rope", "rope_backward")

ops = torch.ops.gemma4
LOWP = [torch.bfloat16, torch.float16]


def _inv_freq(hd, kind="default", base=10000.0):
    """Gemma 4's tables: "default" (sliding layers, base 1e4) and "proportional" (full layers: only the
    first quarter of the pairs rotate, base 1e6, the rest have inv_freq = 0); "random" for coverage."""
    half = hd // 2
    if kind == "random":
        f = torch.rand(half) * 1.5
        f[torch.rand(half) < 0.2] = 0.0
        return f
    if kind == "proportional":
        rot = max(1, half // 4)
        f = torch.zeros(half)
        f[:rot] = 1.0 / (1e6 ** (torch.arange(rot, dtype=torch.float32) * 2 / hd))
        return f
    return 1.0 / (base ** (torch.arange(half, dtype=torch.float32) * 2 / hd))


def _positions(B, T, shared):
    start = torch.randint(0, 8000, (1 if shared else B, 1))
    return start + torch.arange(T)  # int64 [B|1, T], consecutive like real decoding with offsets


def _tol(x):
    """Each output is x1 cos - x2 sin: the terms may cancel, so the rounding error scales with |x|,
    not with the output element."""
    tol = tight_tol(x.dtype)
    tol["atol"] *= max(1.0, x.abs().max().item())
    return tol


# (B, T, nH, hd): size-1 dims, hd/2 odd or below the vector width, Gemma 4 head dims 256 / 512.
SHAPES = [(1, 1, 1, 2), (2, 7, 3, 10), (1, 5, 2, 18), (3, 4, 1, 64), (2, 6, 4, 256), (1, 3, 2, 512),
          (2, 33, 2, 34), (2, 40, 4, 256)]  # the last one is split over threads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["default", "proportional", "random"])
@pytest.mark.parametrize("shared", [True, False])
def test_forward_full_precision(dtype, shape, kind, shared):
    B, T, H, hd = shape
    x = torch.randn(shape, dtype=dtype) * 10 ** torch.empty(()).uniform_(-2, 2).item()
    pos, f = _positions(B, T, shared), _inv_freq(hd, kind)
    torch.testing.assert_close(rope(x, pos, f), ref.rope(x, pos, f), **_tol(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_positions_and_values(dtype):
    x = torch.randn(2, 5, 3, 64, dtype=dtype) * 1e4
    pos = torch.randint(-(2**20), 2**20, (2, 5))  # angles far beyond 2 pi: argument reduction matters
    f = _inv_freq(64)
    torch.testing.assert_close(rope(x, pos, f), ref.rope(x, pos, f), **_tol(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_zero_frequencies_pass_through(dtype):
    x = torch.randn(2, 9, 3, 256).to(dtype)
    f = _inv_freq(256, "proportional")
    out = rope(x, _positions(2, 9, False), f)
    keep = torch.cat([f == 0, f == 0])
    assert torch.equal(out[..., keep], x[..., keep])


def test_shared_positions_equal_expanded():
    x = torch.randn(3, 8, 2, 40)
    pos, f = _positions(3, 8, True), _inv_freq(40)
    torch.testing.assert_close(rope(x, pos, f), rope(x, pos.expand(3, 8).contiguous(), f), rtol=0, atol=0)


def _plain_lowp(x, positions, inv_freq):
    """What transformers does in low precision: fp32 angles, cos/sin cast to x.dtype, then x.dtype
    arithmetic (rotate_half, multiply, add)."""
    angles = positions.float()[..., None] * inv_freq.float()
    emb = torch.cat((angles, angles), dim=-1)[:, :, None, :]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(2, 7, 3, 10), (2, 6, 4, 256), (1, 17, 2, 512)])
@pytest.mark.parametrize("kind", ["default", "proportional"])
def test_forward_low_precision(dtype, shape, kind):
    B, T, H, hd = shape
    x = (torch.randn(shape) * 4).to(dtype)
    pos, f = _positions(B, T, False), _inv_freq(hd, kind)
    ours = rope(x, pos, f)
    assert ours.dtype == dtype
    assert_lowp_close(ours, ref.rope(x.float(), pos, f), _plain_lowp(x, pos, f))


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 7, 3, 10), (2, 6, 4, 256)])
@pytest.mark.parametrize("shared", [True, False])
def test_backward_float32(shape, shared):
    B, T, H, hd = shape
    x = torch.randn(shape, requires_grad=True)
    pos, f = _positions(B, T, shared), _inv_freq(hd, "random")
    g = torch.randn(shape)
    (gx,) = torch.autograd.grad(rope(x, pos, f), x, g)
    (rx,) = torch.autograd.grad(ref.rope(x, pos, f), x, g)
    torch.testing.assert_close(gx, rx, **tight_tol(torch.float32))


@pytest.mark.parametrize("dtype", LOWP)
def test_backward_low_precision(dtype):
    x = (torch.randn(2, 5, 3, 256) * 4).to(dtype).requires_grad_()
    pos, f = _positions(2, 5, False), _inv_freq(256)
    g = torch.randn(2, 5, 3, 256).to(dtype)
    (gx,) = torch.autograd.grad(rope(x, pos, f), x, g)
    xf = x.detach().float().requires_grad_()
    (hx,) = torch.autograd.grad(ref.rope(xf, pos, f), xf, g.float())
    (px,) = torch.autograd.grad(_plain_lowp(x, pos, f), x, g)
    assert_lowp_close(gx, hx, px)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 2, 6, dtype=torch.float64, requires_grad=True)
    f = _inv_freq(6, "random")
    assert torch.autograd.gradcheck(lambda a: rope(a, _pos(), f), (x,))
    assert torch.autograd.gradcheck(lambda a: rope(a, _pos()[:1], f), (x,))


def _pos():
    """Fixed positions (a negative one included) on the test's backend."""
    return torch.tensor([[3, 4, 5], [100, 7, -2]])


def test_opcheck():
    x = torch.randn(2, 3, 2, 8, requires_grad=True)
    f = _inv_freq(8, "random")
    torch.library.opcheck(ops.rope, (x, _pos(), f))
    torch.library.opcheck(ops.rope, (x, _pos()[:1].contiguous(), f))
    torch.library.opcheck(ops.rope_backward, (torch.randn(2, 3, 2, 8), _pos(), f))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 5, 3, 16, requires_grad=True)
    pos, f = _positions(2, 5, False), _inv_freq(16)
    g = torch.randn(2, 5, 3, 16)
    compiled = torch.compile(lambda a, p, fr: rope(a, p, fr) * 2.0, fullgraph=True)
    out = compiled(x, pos, f)
    (cx,) = torch.autograd.grad(out, x, g)
    eager = rope(x, pos, f) * 2.0
    (ex,) = torch.autograd.grad(eager, x, g)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(cx, ex)


@pytest.mark.parametrize("shared", [True, False])
def test_threads_agree(shared):
    """The split over threads must cover every row once: 1 and 2 threads give identical bits."""
    x = torch.randn(3, 50, 4, 256).bfloat16()
    pos, f = _positions(3, 50, shared), _inv_freq(256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rope(x, pos, f)
        torch.set_num_threads(2)
        two = rope(x, pos, f)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_empty():
    x = torch.randn(2, 0, 3, 8)
    assert rope(x, torch.zeros(2, 0, dtype=torch.long), _inv_freq(8)).shape == x.shape


def test_bad_inputs():
    x = torch.randn(2, 3, 2, 8)
    f = _inv_freq(8)
    with pytest.raises(RuntimeError, match="positions must be Long"):
        ops.rope(x, _pos().int(), f)
    with pytest.raises(RuntimeError, match="positions must have 2 dimensions"):
        ops.rope(x, _pos()[0], f)
    with pytest.raises(RuntimeError, match="positions.size\\(0\\) must be 1 or"):
        ops.rope(x, torch.zeros(3, 3, dtype=torch.long), f)
    with pytest.raises(RuntimeError, match="positions.size\\(1\\) must be"):
        ops.rope(x, torch.zeros(2, 4, dtype=torch.long), f)
    with pytest.raises(RuntimeError, match="inv_freq must have head_dim/2"):
        ops.rope(x, _pos(), _inv_freq(10))
    with pytest.raises(RuntimeError, match="inv_freq must be Float"):
        ops.rope(x, _pos(), f.double())
    with pytest.raises(RuntimeError, match="inv_freq must have 1 dimensions"):
        ops.rope(x, _pos(), f[None])
    with pytest.raises(RuntimeError, match="x must have 4 dimensions"):
        ops.rope(x[0], _pos(), f)
    with pytest.raises(RuntimeError, match="head_dim\\) must be even"):
        ops.rope(torch.randn(2, 3, 2, 7), _pos(), f[:3].contiguous())
    # Strided inputs give the same bits as contiguous ones (the op copies them in C++).
    xt, pt, ft = x.transpose(1, 2), torch.randint(0, 50, (2, 2)).t(), torch.randn(8)[::2]
    assert_same(ops.rope(xt, pt, ft), ops.rope(xt.contiguous(), pt.contiguous(), ft.contiguous()))
    assert_same(ops.rope_backward(xt, pt, ft), ops.rope_backward(xt.contiguous(), pt.contiguous(), ft.contiguous()))
    with pytest.raises(RuntimeError, match="x must be float32"):
        ops.rope(x.long(), _pos(), f)
    with pytest.raises(RuntimeError, match="grad_out must have 4 dimensions"):
        ops.rope_backward(x[0], _pos(), f)
