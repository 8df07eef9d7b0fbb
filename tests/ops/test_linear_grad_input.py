"""gemma4::linear_grad_input (grad_out @ weight, linear's input gradient) against reference.linear_grad_input in
float64 (see csrc/linear/: the packed GEMM reading the weight k-major). Error rule: ours against the float64
reference is at most 2x plain PyTorch's (grad_out @ weight in the same dtype).
"""
import math

import pytest
import torch

from gemma4.ops import reference as ref
from gemma4.ops.linear import linear, linear_grad_input
from tests.helpers import assert_lowp_close
from tests.ops.test_linear import CASES, DTYPES, _rand, cpu_isa  # noqa: F401 (a fixture)

ops = torch.ops.gemma4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,N,K", CASES)
def test_forward(cpu_isa, dtype, lead, N, K):
    # grad_out [*lead, N] @ weight [N, K]: N is the reduction here (tails of the k-blocks: 257, 300, 4100 as
    # K elsewhere come from the same CASES swapped), K the output columns (edges of the 16-column tile).
    draws = -(-256 // (math.prod(lead) * K))
    results = []
    for _ in range(draws):
        g = _rand((*lead, N), dtype, scale=10 ** torch.empty(()).uniform_(-1, 1).item())
        w = _rand((N, K), dtype, scale=N**-0.5)
        ours = linear_grad_input(g, w)
        assert ours.dtype == dtype and ours.shape == (*lead, K)
        results.append((ours.flatten(), ref.linear_grad_input(g.double(), w.double()).flatten(), (g @ w).flatten()))
    assert_lowp_close(*(torch.cat(r) for r in zip(*results)))


@pytest.mark.parametrize("lead,N,K", [((12,), 4100, 41), ((130,), 520, 257), ((300,), 8200, 40)])
def test_long_reduction(cpu_isa, lead, N, K):
    """A reduction over several k-blocks with a tail (CASES' K = 4100 and 520, as N here); 300 rows x 8200 is
    packed in two k-ranges (linear_cpu.cpp's kPackFloats)."""
    g, w = _rand((*lead, N), torch.float32), _rand((N, K), torch.float32, scale=N**-0.5)
    assert_lowp_close(linear_grad_input(g, w), ref.linear_grad_input(g.double(), w.double()), g @ w)


def test_float32_grad_out_with_bfloat16_weight():
    """fp32 grad_out and a bf16 weight: fp32 out, the same numbers as the weight widened to fp32 first."""
    for lead, N, K in (((1,), 7, 5), ((130,), 520, 257), ((300,), 8200, 40)):
        g, w = _rand((*lead, N), torch.float32), _rand((N, K), torch.bfloat16, scale=N**-0.5)
        ours = linear_grad_input(g, w)
        assert ours.dtype == torch.float32 and torch.equal(ours, linear_grad_input(g, w.float()))


def test_threads_agree():
    before = torch.get_num_threads()
    g, w = _rand((64, 2051), torch.bfloat16), _rand((2051, 1536), torch.bfloat16, scale=0.03)
    try:
        torch.set_num_threads(1)
        one = linear_grad_input(g, w)
        torch.set_num_threads(2)
        two = linear_grad_input(g, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_empty():
    assert linear_grad_input(torch.randn(0, 8), torch.randn(8, 5)).shape == (0, 5)
    assert linear_grad_input(torch.randn(3, 8), torch.randn(8, 0)).shape == (3, 0)
    assert torch.equal(linear_grad_input(torch.randn(3, 0), torch.randn(0, 5)), torch.zeros(3, 5))


def test_is_linears_input_gradient():
    """linear's backward computes x.grad with it (the same bits), in fp32 and bf16."""
    for dtype in DTYPES:
        x = _rand((2, 13, 40), dtype).requires_grad_()
        w = _rand((24, 40), dtype, scale=0.2)
        g = _rand((2, 13, 24), dtype)
        linear(x, w).backward(g)
        assert torch.equal(x.grad, linear_grad_input(g, w))


def test_backward():
    g = _rand((7, 10), torch.float32).requires_grad_()
    w = _rand((10, 24), torch.float32).requires_grad_()
    gg = _rand((7, 24), torch.float32)
    linear_grad_input(g, w).backward(gg)
    got = g.grad, w.grad
    g.grad = w.grad = None
    (g @ w).backward(gg)
    for a, e in zip(got, (g.grad, w.grad)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_opcheck():
    for rows in (2, 11):
        g = _rand((rows, 10), torch.float32).requires_grad_()
        w = _rand((10, 24), torch.float32).requires_grad_()
        torch.library.opcheck(ops.linear_grad_input, (g, w))
    torch.library.opcheck(ops.linear_grad_input, (_rand((3, 5), torch.bfloat16), _rand((5, 16), torch.bfloat16)))


BAD = [
    (lambda: (torch.randn(4, 8).double(), torch.randn(8, 16).double()), "grad_out must be float32 or bfloat16"),
    (lambda: (torch.randn(4, 8), torch.randn(8, 16).half()), "weight must be Float or BFloat16"),
    (lambda: (torch.randn(4, 8).bfloat16(), torch.randn(8, 16)), "weight must be BFloat16"),
    (lambda: (torch.randn(4, 8), torch.randn(16)), "weight must have 2 dimensions"),
    (lambda: (torch.randn(4, 8), torch.randn(9, 16)), r"weight.size\(0\) must be 8"),
    (lambda: (torch.tensor(1.5), torch.randn(8, 16)), "grad_out must have at least 1 dimension"),
]


@pytest.mark.parametrize("args,match", BAD)
def test_bad_inputs_and_fake_kernel(args, match):
    a = args()
    with pytest.raises(RuntimeError, match=match):
        ops.linear_grad_input(*a)
    with pytest.raises(RuntimeError, match=match):
        ops.linear_grad_input(*(t.to("meta") for t in a))


def test_contiguity_and_devices():
    g, w = torch.randn(4, 8), torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        ops.linear_grad_input(g, torch.randn(16, 8).t())
    with pytest.raises(RuntimeError, match="grad_out must be contiguous"):
        ops.linear_grad_input(torch.randn(8, 4).t(), w)
    with pytest.raises(RuntimeError, match="must be on cpu like the input, got meta"):
        ops.linear_grad_input(g, w.to("meta"))
    out = ops.linear_grad_input(g.to("meta"), w.to("meta"))
    assert out.shape == (4, 16) and out.dtype == torch.float32
    gt = torch.randn(8, 4).t()  # the wrapper makes a strided grad_out contiguous
    torch.testing.assert_close(linear_grad_input(gt, w), gt @ w, rtol=1e-5, atol=1e-5)
