"""gemma4::gated_activation and gated_activation_backward against reference.gated_activation
(see csrc/activation/)."""
import pytest
import torch
import torch.nn.functional as F

from gemma4.ops import reference as ref
from gemma4.ops.activation import gated_activation
from tests.helpers import assert_lowp_close, assert_same, tight_tol

# Every test runs on each backend present (tests/ops/conftest.py), its inputs created there.
pytestmark = pytest.mark.usefixtures("device")
OPS = ("gated_activation", "gated_activation_backward")

ops = torch.ops.gemma4
LOWP = [torch.bfloat16, torch.float16]
ACTS = ["gelu_tanh", "silu"]

# Size-1, below / not a multiple of the vector width, Gemma 4 MLP widths, and more than one
# parallel block (16384 elements) with a ragged tail.
SHAPES = [(1,), (7,), (3, 37), (2, 5, 1023), (2, 6144), (5, 10007)]


def _inputs(shape, dtype, scale=3.0):
    gate = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    up = torch.randn(shape, dtype=torch.float64).to(dtype)
    return gate, up


def _plain(gate, up, activation):
    """Plain PyTorch in the inputs' dtype (what transformers' MLP does in bf16)."""
    a = F.gelu(gate, approximate="tanh") if activation == "gelu_tanh" else F.silu(gate)
    return a * up


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_forward_full_precision(dtype, shape, activation):
    gate, up = _inputs(shape, dtype)
    torch.testing.assert_close(gated_activation(gate, up, activation), ref.gated_activation(gate, up, activation),
                               **tight_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTS)
def test_large_values(dtype, activation):
    # Saturated tails (the exp argument is clamped there) and values around the knee.
    gate = torch.cat([torch.linspace(-200, 200, 801), torch.randn(500) * 30, torch.tensor([0.0, -0.0, 1e-30])])
    gate = gate.to(dtype)
    up = torch.randn(gate.shape, dtype=dtype)
    torch.testing.assert_close(gated_activation(gate, up, activation), ref.gated_activation(gate, up, activation),
                               **tight_tol(dtype))
    g = torch.randn(gate.shape, dtype=dtype)
    ours = ops.gated_activation_backward(g, gate, up, activation)
    gr, ur = gate.clone().requires_grad_(), up.clone().requires_grad_()
    theirs = torch.autograd.grad(ref.gated_activation(gr, ur, activation), (gr, ur), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tight_tol(dtype))


def test_alias_gelu_pytorch_tanh():
    gate, up = _inputs((4, 33), torch.float32)
    torch.testing.assert_close(gated_activation(gate, up, "gelu_pytorch_tanh"), gated_activation(gate, up, "gelu_tanh"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(3, 37), (2, 6144), (5, 10007)])
@pytest.mark.parametrize("activation", ACTS)
def test_forward_low_precision(dtype, shape, activation):
    gate, up = _inputs(shape, dtype)
    ours = gated_activation(gate, up, activation)
    assert ours.dtype == dtype
    assert_lowp_close(ours, ref.gated_activation(gate.float(), up.float(), activation), _plain(gate, up, activation))


def _grads(fn, gate, up, g):
    gate, up = gate.detach().requires_grad_(), up.detach().requires_grad_()
    return torch.autograd.grad(fn(gate, up), (gate, up), g)


@pytest.mark.parametrize("shape", [(1,), (3, 37), (5, 10007)])
@pytest.mark.parametrize("activation", ACTS)
def test_backward_float32(shape, activation):
    gate, up = _inputs(shape, torch.float32)
    g = torch.randn(shape)
    ours = _grads(lambda a, b: gated_activation(a, b, activation), gate, up, g)
    theirs = _grads(lambda a, b: ref.gated_activation(a, b, activation), gate, up, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tight_tol(torch.float32))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("activation", ACTS)
def test_backward_low_precision(dtype, activation):
    gate, up = _inputs((4, 3001), dtype)
    g = torch.randn(4, 3001).to(dtype)
    ours = _grads(lambda a, b: gated_activation(a, b, activation), gate, up, g)
    hi = _grads(lambda a, b: ref.gated_activation(a, b, activation), gate.float(), up.float(), g.float())
    plain = _grads(lambda a, b: _plain(a, b, activation), gate, up, g)
    for o, h, p in zip(ours, hi, plain):
        assert o.dtype == dtype
        assert_lowp_close(o, h, p)


@pytest.mark.parametrize("activation", ACTS)
def test_gradcheck_float64(activation):
    gate, up = _inputs((3, 11), torch.float64, scale=2.0)
    assert torch.autograd.gradcheck(lambda a, b: gated_activation(a, b, activation),
                                    (gate.requires_grad_(), up.requires_grad_()))


def test_opcheck():
    gate, up = _inputs((4, 19), torch.float32)
    for activation in ACTS:
        torch.library.opcheck(ops.gated_activation, (gate.requires_grad_(), up.requires_grad_(), activation))
        torch.library.opcheck(ops.gated_activation_backward,
                              (torch.randn(4, 19), gate.detach(), up.detach(), activation))


def test_torch_compile_fullgraph():
    gate, up = _inputs((3, 40), torch.float32)
    gate.requires_grad_()
    up.requires_grad_()
    g = torch.randn(3, 40)
    compiled = torch.compile(lambda a, b: gated_activation(a, b, "gelu_tanh") * 2.0, fullgraph=True)
    out = compiled(gate, up)
    cg = torch.autograd.grad(out, (gate, up), g)
    eager = gated_activation(gate, up, "gelu_tanh") * 2.0
    eg = torch.autograd.grad(eager, (gate, up), g)
    torch.testing.assert_close(out, eager)
    for a, b in zip(cg, eg):
        torch.testing.assert_close(a, b)


def test_threads_agree():
    """The split over threads must cover every element once: 1 and 2 threads give identical bits."""
    gate, up = _inputs((7, 10007), torch.bfloat16)
    g = torch.randn(7, 10007).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.gated_activation(gate, up, "gelu_tanh"), *ops.gated_activation_backward(g, gate, up, "silu")
        torch.set_num_threads(2)
        two = ops.gated_activation(gate, up, "gelu_tanh"), *ops.gated_activation_backward(g, gate, up, "silu")
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_empty():
    gate = torch.randn(0, 8)
    assert gated_activation(gate, gate.clone()).shape == (0, 8)


def test_bad_inputs():
    gate, up = _inputs((4, 16), torch.float32)
    with pytest.raises(RuntimeError, match="activation must be \"gelu_tanh\" or \"silu\", got \"relu\""):
        ops.gated_activation(gate, up, "relu")
    with pytest.raises(RuntimeError, match="activation must be"):
        gated_activation(gate, up, "gelu")  # the exact gelu is not Gemma's: refuse it, do not guess
    with pytest.raises(RuntimeError, match="activation must be"):
        ops.gated_activation_backward(gate, gate, up, "tanh")
    with pytest.raises(RuntimeError, match="up must have gate's shape"):
        ops.gated_activation(gate, up[:, :15].contiguous(), "silu")
    with pytest.raises(RuntimeError, match="up must have gate's dtype"):
        ops.gated_activation(gate, up.double(), "silu")
    with pytest.raises(RuntimeError, match="gate must be float32"):
        ops.gated_activation(gate.int(), up.int(), "silu")
    # Strided inputs give the same bits as contiguous ones (the op copies them in C++).
    gt, ut, got = torch.randn(16, 4).t(), torch.randn(4, 32)[:, ::2], torch.randn(16, 4).t()
    assert_same(ops.gated_activation(gt, ut, "silu"), ops.gated_activation(gt.contiguous(), ut.contiguous(), "silu"))
    assert_same(ops.gated_activation_backward(got, gt, ut, "gelu_tanh"),
                ops.gated_activation_backward(got.contiguous(), gt.contiguous(), ut.contiguous(), "gelu_tanh"))
    with pytest.raises(RuntimeError, match="grad_out must have gate's shape"):
        ops.gated_activation_backward(torch.randn(4, 15), gate, up, "silu")
    with pytest.raises(RuntimeError, match="grad_out must have gate's dtype"):
        ops.gated_activation_backward(gate.half(), gate, up, "silu")
    with pytest.raises(RuntimeError, match="activation must be"):
        torch.compile(lambda a, b: gated_activation(a, b, "relu"), fullgraph=True, backend="aot_eager")(gate, up)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("activation", ACTS)
def test_extreme_inputs_match_the_reference(dtype, activation):
    """Huge negative gates give 0 (not -18 from a clamped exponent), +-inf and NaN give what the
    reference gives (NaN for -inf: -inf * 0), in every lane position (vector body and tail)."""
    special = torch.tensor([-1e36, -3e38, -1e10, -1e4, -300.0, -100.0, -89.0, -88.0, -80.0, -20.0, -7.0, -0.0, 0.0,
                            1e-30, 7.0, 80.0, 1e4, 1e36, float("inf"), float("-inf"), float("nan")], dtype=torch.float64)
    gate = special.to(dtype)
    gate = gate[torch.randperm(gate.numel())].repeat(3)  # shuffled: specials land in body and tail lanes
    up = _inputs(gate.shape, dtype)[1]
    ours = gated_activation(gate, up, activation)
    want = ref.gated_activation(gate, up, activation)
    # bf16: one unit in the last place (the fast exp of the bf16 path), no more; tiny results may flush.
    tol = dict(rtol=2 ** -7, atol=1e-30) if dtype == torch.bfloat16 else tight_tol(dtype)
    torch.testing.assert_close(ours, want, equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTS)
def test_large_negative_gradients_match_the_reference(dtype, activation):
    """Gradients for large negative gates, where the old clamped exponent made act' nonzero."""
    gate = -torch.logspace(1, 9, 50, dtype=torch.float64).to(dtype)
    up = _inputs(gate.shape, dtype)[1]
    g = torch.randn(gate.shape, dtype=dtype)
    ours = _grads(lambda a, b: gated_activation(a, b, activation), gate, up, g)
    theirs = _grads(lambda a, b: ref.gated_activation(a, b, activation), gate, up, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, equal_nan=True, **tight_tol(dtype))


def test_reference_gelu_has_no_cancellation():
    """reference.gated_activation in float32 keeps its relative accuracy near -7 (where 1 + tanh
    cancels): against the float64 evaluation of the same function."""
    u = torch.linspace(-9, -5, 401, dtype=torch.float64)
    one = torch.ones_like(u)
    f32 = ref.gated_activation(u.float(), one.float(), "gelu_tanh").double()
    f64 = ref.gated_activation(u, one, "gelu_tanh")
    # u sigmoid(2z) has relative condition number ~1 + |2z| in z: a few float32 roundings of z and
    # the sigmoid allow 4 eps (1 + |2z|); 1 + tanh(z) loses everything (relative error ~1) here.
    z2 = (2 * 0.7978845608028654 * (u + 0.044715 * u ** 3)).abs()
    assert (((f32 - f64).abs() / f64.abs()) <= 4 * torch.finfo(torch.float32).eps * (1 + z2)).all()
