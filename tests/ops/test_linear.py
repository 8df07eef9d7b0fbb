"""gemma4::linear against reference.linear in float64 (see csrc/linear/).

Every path is covered: rows <= 8 (the weight-streaming GEMV, every row count 1..8 has its own
instantiation) and more rows (the packed GEMM of linear_gemm.h, fp32 and bf16 weights, with row and
column edges, a K tail and K longer than one k-block, 300 x 8200 bf16 packed in two k-ranges; fp32's sgemm
for K = 12288 and 8200). Error rule:
ours against the float64 reference is at most 2x plain PyTorch's (F.linear in the same dtype).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from gemma4.ops import reference as ref
from gemma4.ops.linear import linear, linear_cpu_isa
from tests.helpers import assert_lowp_close

ops = torch.ops.gemma4
DTYPES = [torch.float32, torch.bfloat16]

# (leading dims of x, N, K): K off the vector width (tails), N off the row tile (last rows),
# a K longer than one weight block, Gemma 4 widths, and enough rows for both threads.
CASES = [((1,), 1, 1), ((1,), 5, 7), ((3,), 13, 37), ((1, 1), 4096, 1536), ((2,), 259, 300),
         ((5,), 18, 64), ((1, 8), 131, 96), ((7,), 1, 17), ((9,), 70, 33), ((2, 17), 300, 1536),
         ((130,), 257, 520), ((40,), 20, 12288), ((6,), 1536, 256), ((4,), 300, 6144), ((12,), 41, 4100),
         ((300,), 40, 8200)]


def _cpu_has_avx512():
    try:
        linear_cpu_isa("avx512")
        return True
    except RuntimeError:
        return False
    finally:
        linear_cpu_isa("auto")


@pytest.fixture(params=["avx2", "avx512"])
def cpu_isa(request):
    """Runs a test once per kernel instruction set, the decode GEMV's and the prefill GEMM's (AVX-512 skipped
    where the CPU lacks it)."""
    if request.param == "avx512" and not _cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512 F/BW/VL")
    yield linear_cpu_isa(request.param)
    linear_cpu_isa("auto")


def _rand(shape, dtype, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,N,K", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward(cpu_isa, dtype, lead, N, K, with_bias):
    # A tiny problem has a handful of outputs, and its max error is luck (one lucky rounding in F.linear
    # halves its error), so tiny shapes are drawn several times and judged over 256+ outputs together.
    draws = -(-256 // (math.prod(lead) * N))
    results = []
    for _ in range(draws):
        x = _rand((*lead, K), dtype, scale=10 ** torch.empty(()).uniform_(-1, 1).item())
        w = _rand((N, K), dtype, scale=K**-0.5)
        b = _rand((N,), dtype) if with_bias else None
        ours = linear(x, w, b)
        assert ours.dtype == dtype and ours.shape == (*lead, N)
        ref_hi = ref.linear(x.double(), w.double(), None if b is None else b.double())
        results.append((ours.flatten(), ref_hi.flatten(), F.linear(x, w, b).flatten()))
    assert_lowp_close(*(torch.cat(r) for r in zip(*results)))


@pytest.mark.parametrize("w_dtype", DTYPES)
@pytest.mark.parametrize("M", [3, 64, 130])  # the GEMV, the x-vector tile (fp32 weight), the packed tile
def test_subnormals_count_as_zero(cpu_isa, w_dtype, M):
    """Subnormal inputs and products are read and written as zero inside the kernels (csrc/common/
    flush_denormals.h: Intel CPUs take a microcode assist for each), and the threads' own float mode is
    restored afterwards. x's values are subnormal (fp32) or tiny normal ones whose products with a weight below 1
    fall under the normal range (bf16), so IEEE arithmetic would give small nonzero outputs."""
    K, N = 256, 300
    sign = torch.randint(0, 2, (M, K)).double() * 2 - 1
    for x_dtype, scale in ((torch.float32, 1e-39), (torch.bfloat16, 4e-38)):
        if w_dtype == torch.float32 and x_dtype == torch.bfloat16:
            continue  # not a supported pair
        x = (sign * torch.empty(M, K, dtype=torch.float64).uniform_(1, 2) * scale).to(x_dtype)
        w = (torch.empty(N, K, dtype=torch.float64).uniform_(-0.1, 0.1)).to(w_dtype)
        assert bool((F.linear(x.double(), w.double()) != 0).all())  # the exact sums are not zero
        assert bool((linear(x, w) == 0).all())
    tiny = torch.full((1 << 20,), 1e-39)  # torch's own elementwise op, on every thread: IEEE as before
    assert bool((tiny * 1.0 == tiny).all()) and bool((tiny * 1.0 != 0).all())


@pytest.mark.parametrize("lead,N,K", [((1,), 5, 7), ((3,), 13, 37), ((2, 17), 300, 1536), ((130,), 257, 520),
                                      ((96,), 257, 520)])
def test_float32_x_with_bfloat16_weight(cpu_isa, lead, N, K):
    """fp32 x and a bf16 weight (the fused loss's frozen head): fp32 out, the same numbers as the weight widened
    to fp32 first (a bf16 value is exact in fp32), through the GEMV (rows <= 8) and the packed GEMM (96 rows: the
    fp32 weight takes AVX-512's x-vector tile, the bf16 one the 8 x 32 tile); backward gives the weight's gradient
    in bf16."""
    x = _rand((*lead, K), torch.float32).requires_grad_()
    w = _rand((N, K), torch.bfloat16, scale=K**-0.5).requires_grad_()
    b = _rand((N,), torch.float32)
    ours = linear(x, w, b)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, linear(x, w.float(), b))
    assert_lowp_close(ours, ref.linear(x.double(), w.double(), b.double()), F.linear(x, w.float(), b))
    ours.sum().backward()
    assert w.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 64])
def test_matches_reference_at_dtype(cpu_isa, dtype, rows):
    """fp32 accumulation, one rounding: the same maths as reference.linear at the dtype."""
    x, w = _rand((rows, 200), dtype), _rand((150, 200), dtype, scale=0.1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-3)
    torch.testing.assert_close(linear(x, w), ref.linear(x, w), **tol)


def test_threads_agree(cpu_isa):
    """Every output row is computed once by one thread: 1 and 2 threads give identical bits."""
    before = torch.get_num_threads()
    x1, x64 = _rand((1, 1536), torch.bfloat16), _rand((64, 1536), torch.bfloat16)
    w = _rand((2051, 1536), torch.bfloat16, scale=0.03)
    try:
        torch.set_num_threads(1)
        one = linear(x1, w), linear(x64, w)
        torch.set_num_threads(2)
        two = linear(x1, w), linear(x64, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("M,N,K", [(9, 70, 33), (13, 257, 520), (64, 300, 1536), (130, 41, 4100), (300, 8200, 8200)])
def test_gemm_tiles_agree_bitwise(x_dtype, w_dtype, M, N, K):
    """The prefill GEMM's AVX2 6 x 16 tile and AVX-512 8 x 32 tile run the same FMA chain per output over the
    same k-blocks, so their results are equal bit for bit: forward (with a bias) and the input gradient, rows
    and columns off both tiles, k-block tails, and 300 x 8200 packed in two k-ranges (N >= K: without AVX-512
    an fp32 weight with K > 6144 and N < K goes to MKL's sgemm, packed_gemm_faster in csrc/linear/linear_cpu.cpp)."""
    if not _cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512 F/BW/VL")
    x, w, b = _rand((M, K), x_dtype), _rand((N, K), w_dtype, scale=K**-0.5), _rand((N,), x_dtype)
    g = _rand((M, N), x_dtype)
    got = {}
    try:
        for isa in ("avx2", "avx512"):
            linear_cpu_isa(isa)
            got[isa] = ops.linear(x, w, b), ops.linear_grad_input(g, w)
    finally:
        linear_cpu_isa("auto")
    assert torch.equal(got["avx2"][0], got["avx512"][0])
    assert torch.equal(got["avx2"][1], got["avx512"][1])


def test_cpu_isa_reports_and_rejects():
    assert linear_cpu_isa() in ("avx2", "avx512")
    assert linear_cpu_isa("avx2") == "avx2"
    assert linear_cpu_isa("auto") in ("avx2", "avx512")
    with pytest.raises(RuntimeError, match="request must be"):
        linear_cpu_isa("sse")


def test_empty():
    assert linear(torch.randn(0, 8), torch.randn(5, 8)).shape == (0, 5)
    assert linear(torch.randn(3, 8), torch.randn(0, 8)).shape == (3, 0)
    b = torch.randn(5)
    torch.testing.assert_close(linear(torch.randn(3, 0), torch.randn(5, 0), b), b.expand(3, 5))


@pytest.mark.parametrize("rows", [1, 12])
def test_backward(rows):
    x = _rand((2, rows, 24), torch.float32).requires_grad_()
    w = _rand((10, 24), torch.float32).requires_grad_()
    b = _rand((10,), torch.float32).requires_grad_()
    g = torch.randn(2, rows, 10)
    linear(x, w, b).backward(g)
    got = x.grad, w.grad, b.grad
    x.grad = w.grad = b.grad = None
    F.linear(x, w, b).backward(g)
    for a, e in zip(got, (x.grad, w.grad, b.grad)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_opcheck():
    for rows in (2, 11):
        x = _rand((rows, 24), torch.float32).requires_grad_()
        w = _rand((10, 24), torch.float32).requires_grad_()
        b = _rand((10,), torch.float32).requires_grad_()
        torch.library.opcheck(ops.linear, (x, w, b))
        torch.library.opcheck(ops.linear, (x, w, None))
    torch.library.opcheck(ops.linear, (_rand((3, 16), torch.bfloat16), _rand((5, 16), torch.bfloat16), None))


def test_torch_compile_fullgraph():
    x, w = _rand((3, 32), torch.float32), _rand((16, 32), torch.float32)
    compiled = torch.compile(lambda a, b: linear(a, b) * 2.0, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), linear(x, w) * 2.0)


def test_bad_inputs():
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        ops.linear(x.double(), w.double(), None)
    with pytest.raises(RuntimeError, match="weight must be Float or BFloat16, got Half"):
        ops.linear(x, w.half(), None)
    with pytest.raises(RuntimeError, match="weight must be BFloat16"):
        ops.linear(x.bfloat16(), w, None)
    with pytest.raises(RuntimeError, match="weight must have 2 dimensions"):
        ops.linear(x, torch.randn(16), None)
    with pytest.raises(RuntimeError, match=r"weight.size\(1\) must be 16"):
        ops.linear(x, torch.randn(8, 15), None)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        ops.linear(x, torch.randn(16, 8).t(), None)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.linear(torch.randn(16, 4).t(), w, None)
    with pytest.raises(RuntimeError, match=r"bias.size\(0\) must be 8"):
        ops.linear(x, w, torch.randn(7))
    with pytest.raises(RuntimeError, match="bias must be Float"):
        ops.linear(x, w, torch.randn(8).bfloat16())
    with pytest.raises(RuntimeError, match="x must have at least 1 dimension"):
        ops.linear(torch.tensor(1.5), w, None)
    # The wrapper makes a strided x contiguous rather than failing.
    xt = torch.randn(16, 4).t()
    torch.testing.assert_close(linear(xt, w), F.linear(xt, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args,match", [
    (lambda: (torch.randn(4, 16).double(), torch.randn(8, 16).double(), None), "x must be float32 or bfloat16"),
    (lambda: (torch.randn(4, 16), torch.randn(8, 16).half(), None), "weight must be Float or BFloat16"),
    (lambda: (torch.randn(4, 16).bfloat16(), torch.randn(8, 16), None), "weight must be BFloat16"),
    (lambda: (torch.randn(4, 16), torch.randn(8, 15), None), r"weight.size\(1\) must be 16"),
    (lambda: (torch.randn(4, 16), torch.randn(8, 16), torch.randn(7)), r"bias.size\(0\) must be 8"),
])
def test_fake_kernel_rejects_what_the_kernel_rejects(args, match):
    a = args()
    with pytest.raises(RuntimeError, match=match):
        ops.linear(*a)
    with pytest.raises(RuntimeError, match=match):
        ops.linear(*(t.to("meta") if isinstance(t, torch.Tensor) else t for t in a))


def test_cpu_and_meta_mixed_is_an_error():
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="must be on cpu like the input, got meta"):
        ops.linear(x, w.to("meta"), None)
    out = ops.linear(x.to("meta"), w.to("meta"), None)
    assert out.shape == (2, 8) and out.dtype == torch.float32
