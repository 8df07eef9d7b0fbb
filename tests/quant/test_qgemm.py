"""gemma4::qgemm against the float64 reference, on every format, activation dtype and CPU path."""
import pytest
import torch

from gemma4 import ops
from gemma4.ops import reference
from tests.helpers import assert_lowp_close
from tests.quant.common import FORMAT_IDS, FORMATS, available_isas, cpu_isa, random_qweight  # noqa: F401 (fixture)

M_VALUES = [1, 2, 3, 4, 5, 7, 16, 33, 300]


@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("k", [704, 2112, 1536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_qgemm_matches_reference(cpu_isa, bits, group, k, dtype):
    if group is not None and k % group:
        pytest.skip(f"K={k} is not a multiple of group {group}")
    n = 70  # not a multiple of the 4-row tiles: exercises the tails
    scale_dtype = [torch.float32, torch.bfloat16, torch.float16][torch.randint(3, ()).item()]
    qweight, scales = random_qweight(n, k, bits, group, scale_dtype)
    w64 = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
    w_lowp = w64.to(dtype)
    for m in M_VALUES:
        x = torch.randn(m, k).to(dtype)
        bias = torch.randn(n).to(dtype) if m % 2 else None
        ours = ops.qgemm(x, qweight, scales, bias)
        ref64 = x.double() @ w64.t() + (bias.double() if bias is not None else 0)
        plain = torch.nn.functional.linear(x, w_lowp, bias)  # plain PyTorch in the activation dtype
        assert ours.dtype == dtype and ours.shape == (m, n)
        assert_lowp_close(ours, ref64, plain)  # the error rule, float32 activations included


def test_qgemm_leading_dims_and_empty():
    qweight, scales = random_qweight(12, 64, 4, 32)
    x = torch.randn(2, 3, 64)
    y = ops.qgemm(x, qweight, scales)
    assert y.shape == (2, 3, 12)
    torch.testing.assert_close(y, reference.qgemm(x, qweight, scales))
    assert ops.qgemm(torch.randn(0, 64), qweight, scales).shape == (0, 12)


def test_qgemm_large_call_takes_its_own_scratch(cpu_isa):
    """A call whose temporaries pass CallScratch's 8 MB (here ~9.5 MB: int16 x, the group-32 layout, the fp32
    sums) gets an ATen buffer instead of the per-thread block; the numbers are the same rule's."""
    m, n, k = 512, 512, 4096
    qweight, scales = random_qweight(n, k, 4, 32, torch.bfloat16)
    x = torch.randn(m, k).half()
    w64 = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
    ours = ops.qgemm(x, qweight, scales)
    assert_lowp_close(ours, x.double() @ w64.t(), torch.nn.functional.linear(x, w64.half()))
    small = ops.qgemm(x[:3], qweight, scales)  # then a small call reuses the per-thread block
    assert torch.equal(small, ours[:3])


def test_qgemm_opcheck():
    qweight, scales = random_qweight(20, 96, 4, 32, torch.bfloat16)
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    bias = torch.randn(20, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x, qweight, scales, bias))
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x.float().requires_grad_(), qweight, scales, None))


def test_qgemm_compiles():
    qweight, scales = random_qweight(8, 64, 8, None)
    x = torch.randn(5, 64)
    f = torch.compile(lambda t: ops.qgemm(t, qweight, scales) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), reference.qgemm(x, qweight, scales) * 2)


@pytest.mark.parametrize("bits,group", [(4, 64), (8, 32), (8, None)], ids=["int4_g64", "int8_g32", "int8_pc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_qgemm_backward_matches_reference(bits, group, dtype):
    qweight, scales = random_qweight(300, 128, bits, group)  # more rows than the backward's 256-row slab
    x = torch.randn(2, 3, 128, dtype=torch.float64).to(dtype).requires_grad_()
    bias = torch.randn(300, dtype=torch.float64).to(dtype).requires_grad_()
    g = torch.randn(2, 3, 300, dtype=torch.float64).to(dtype)
    ops.qgemm(x, qweight, scales, bias).backward(g)
    w = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
    # float32 accumulation, rounded once to dtype: exact up to float32 sums, then one rounding
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    assert x.grad.dtype == dtype and x.grad.shape == x.shape and bias.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double(), (g.double() @ w).to(dtype).double(), **tol)
    torch.testing.assert_close(bias.grad.double(), g.double().sum((0, 1)).to(dtype).double(), **tol)


def test_qgemm_records_no_graph_without_grad():
    qweight, scales = random_qweight(20, 64, 4, 32)
    x = torch.randn(3, 64, requires_grad=True)
    with torch.no_grad():
        assert ops.qgemm(x, qweight, scales).grad_fn is None
    assert ops.qgemm(x, qweight, scales).grad_fn is not None
    assert ops.qgemm(x.detach(), qweight, scales).grad_fn is None


def test_qgemm_cpu_isa_reports_and_rejects():
    assert ops.quant.qgemm_cpu_isa() in ("avx2", "avx512", "avx512vnni")
    assert ops.quant.qgemm_cpu_isa("dequant") == "dequant"
    assert ops.quant.qgemm_cpu_isa("packed") == "packed"
    assert ops.quant.qgemm_cpu_isa("auto") == available_isas()[-1]  # the best this CPU has
    with pytest.raises(RuntimeError,
                       match="request must be '', 'avx2', 'avx512', 'dequant', 'avx512vnni', 'packed', 'auto'"):
        ops.quant.qgemm_cpu_isa("sse")
    assert ops.quant.qgemm_cpu_isa() == available_isas()[-1]  # a refused request changes nothing
    if "avx512vnni" not in available_isas():
        ops.quant.qgemm_cpu_isa("dequant")
        with pytest.raises(RuntimeError, match="does not support AVX512_VNNI"):
            ops.quant.qgemm_cpu_isa("avx512vnni")
        assert ops.quant.qgemm_cpu_isa() == "dequant"
        ops.quant.qgemm_cpu_isa("auto")


def test_qgemm_cuda_path_reports_and_rejects():
    """The CUDA route selector is plain state, in every build (CPU calls ignore it)."""
    assert ops.quant.qgemm_cuda_path() == "auto"
    assert ops.quant.qgemm_cuda_path("tiled") == "tiled"
    assert ops.quant.qgemm_cuda_path("dequant") == "dequant"
    assert ops.quant.qgemm_cuda_path("ring") == "ring"
    assert ops.quant.qgemm_cuda_path("bulk") == "bulk"
    assert ops.quant.qgemm_cuda_path("wgmma") == "wgmma"
    assert ops.quant.qgemm_cuda_path("x16") == "x16"
    assert ops.quant.qgemm_cuda_path("resident") == "resident"
    assert ops.quant.qgemm_cuda_path("auto") == "auto"
    with pytest.raises(RuntimeError, match="request must be '', 'auto', 'tiled', .*'x16', 'resident', got 'cublas'"):
        ops.quant.qgemm_cuda_path("cublas")
    assert ops.quant.qgemm_cuda_path() == "auto"


def _bad(**over):
    args = dict(x=torch.randn(2, 64), qweight=random_qweight(8, 64, 4, 32)[0], scales=torch.rand(8, 2), bias=None)
    args.update(over)
    return args


@pytest.mark.parametrize("args,match", [
    (_bad(x=torch.randn(2, 64, dtype=torch.float64)), "x must be float32, bfloat16 or float16"),
    (_bad(x=torch.randn(2, 48)), "K must be a positive multiple of 32"),
    (_bad(x=torch.randn(64, 2).t()), "x must be contiguous"),
    (_bad(qweight=torch.zeros(8, 32, dtype=torch.int32)), "qweight must be uint8"),
    (_bad(qweight=torch.zeros(8, 64, dtype=torch.uint8)), r"qweight.size\(1\) must be 32"),
    (_bad(qweight=torch.zeros(32, 8, dtype=torch.uint8).t()), "qweight must be contiguous"),
    (_bad(scales=torch.rand(8, 3)), "scales.size\\(1\\) must divide K"),
    (_bad(scales=torch.rand(8, 4)), "scales.size\\(1\\) must divide K"),  # groups of 16
    (_bad(scales=torch.rand(7, 2)), r"scales.size\(0\) must be 8"),
    (_bad(scales=torch.ones(8, 2, dtype=torch.int32)), "scales must be float32, bfloat16 or float16"),
    (_bad(bias=torch.randn(8, dtype=torch.bfloat16)), "bias must be Float"),
    (_bad(bias=torch.randn(9)), r"bias.size\(0\) must be 8"),
    (_bad(qweight=torch.zeros(8, 32, dtype=torch.uint8, device="meta")), "qweight must be on"),
])
def test_qgemm_bad_inputs(args, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        torch.ops.gemma4.qgemm(**args)
    meta = {k: (v.to("meta") if v is not None else None) for k, v in args.items()}
    if "contiguous" not in match and "must be on" not in match:  # the fake kernel checks too
        with pytest.raises((RuntimeError, ValueError)):
            torch.ops.gemma4.qgemm(**meta)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_qgemm_non_finite_activations_poison_only_their_row(cpu_isa, dtype):
    """A NaN or inf in one row of x (bf16/fp16 take the int16 path, whose block scale must not hide it)
    makes that row's outputs non-finite, as a plain matmul does, and leaves the other rows exact."""
    qweight, scales = random_qweight(40, 128, 4, 32, torch.bfloat16)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(3, 128).to(dtype)
        x[1, 77] = bad
        ours = ops.qgemm(x, qweight, scales)
        assert not torch.isfinite(ours[1]).any()
        torch.testing.assert_close(ours[[0, 2]], ops.qgemm(x[[0, 2]], qweight, scales), rtol=0, atol=0)


@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
def test_dequantize_route_is_plain_pytorch_on_the_bf16_weight(bits, group):
    """The bf16 route of CPUs with a native bf16 GEMM (forced here) dequantizes to bf16 exactly as
    formats.dequantize does (q * scale in float32, rounded to nearest even once; on AVX-512 CPUs by the vector
    dequantizer, qdequant_avx512.cpp, elsewhere the scalar loop) and calls torch's GEMM: with one slab of weight
    rows its output is F.linear's on that weight, bit for bit, denormal and overflowing products included."""
    from gemma4.quant import formats

    k = 2112 if group is None or 2112 % group == 0 else 1536
    qweight, scales = random_qweight(300, k, bits, group, torch.float32)
    scales[0, 0] = scales.abs().max() * 1e3  # a large scale: products far from the others' exponents
    scales[1, -1] = 3e-39  # float32 denormal products: kept, as c10's bf16 rounding keeps them
    scales[2, 0] = 3e38  # products past bf16's largest value round to inf
    w = formats.dequantize(qweight, scales, torch.bfloat16)  # [N, K]
    x = torch.randn(70, k).to(torch.bfloat16)
    bias = torch.randn(300).to(torch.bfloat16)
    ops.quant.qgemm_cpu_isa("dequant")
    try:
        got = ops.qgemm(x, qweight, scales, bias)
    finally:
        ops.quant.qgemm_cpu_isa("auto")
    # equal_nan: the inf weights of row 2 meet both signs of x, so that output column is NaN on both sides
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, bias), rtol=0, atol=0, equal_nan=True)


def test_auto_takes_the_packed_route_from_its_row_count():
    """On a CPU without AVX-512, "auto" runs bf16 prefill on the packed fp32 GEMM (the weight dequantized into its
    panels) from 48 rows and the int16 kernels below: bit for bit the forced routes. fp32 x never takes it."""
    if "avx512" in available_isas():
        pytest.skip("AVX-512 CPUs keep their own kernels for prefill (or the bf16 dequantize route)")
    qweight, scales = random_qweight(96, 1536, 4, 32, torch.bfloat16)
    for m, route in ((47, "avx2"), (48, "packed")):
        x = torch.randn(m, 1536, dtype=torch.bfloat16)
        auto = ops.qgemm(x, qweight, scales)
        try:
            ops.quant.qgemm_cpu_isa(route)
            forced = ops.qgemm(x, qweight, scales)
            ops.quant.qgemm_cpu_isa("avx2" if route == "packed" else "packed")
            other = ops.qgemm(x, qweight, scales)
        finally:
            ops.quant.qgemm_cpu_isa("auto")
        assert torch.equal(auto, forced) and not torch.equal(auto, other), (m, route)
    x = torch.randn(300, 1536)  # fp32: the FMA kernel at every row count, forced "packed" or not
    auto = ops.qgemm(x, qweight, scales)
    try:
        ops.quant.qgemm_cpu_isa("packed")
        assert torch.equal(ops.qgemm(x, qweight, scales), auto)
    finally:
        ops.quant.qgemm_cpu_isa("auto")
