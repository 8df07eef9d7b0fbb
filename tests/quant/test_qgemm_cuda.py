"""gemma4::qgemm on CUDA (csrc/quant/qgemm_cuda.cu): the tensor-core GEMV (M <= 32, x tiles of 8, 16 and 32
rows), the tiled tensor-core GEMM on the packed weight (bf16/fp16 x above 32 rows; 64- and 128-row blocks,
split over K where the tiles leave SMs idle) and the dequantize + cuBLAS path (fp32 x, and above the tiled
GEMM's rows), each reached through the cuda_path fixture, against float64 and against plain PyTorch doing the same
matmul in the activation dtype on the GPU (the error rule: at most 2x its error, plus one ulp of the
largest output), and against the CPU kernel. Every format, activation dtype and scale dtype; K = 704 and
2112 (odd numbers of 64-weight chunks, an odd run count's tail) and 1536; N not a multiple of 32 (tail
rows) and large (few K slices per block). Skipped without a GPU or a CUDA build."""
import itertools

import pytest
import torch

from gemma4 import ops
from gemma4._native import build_info
from gemma4.ops import quant as qops
from gemma4.ops import reference
from tests.helpers import assert_lowp_close, assert_same, max_abs_err
from tests.quant.common import (FORMAT_IDS, FORMATS, cuda_path, hopper_gemm_available,  # noqa: F401 (fixture)
                                random_qweight)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info["cuda"]),
                                 reason="needs a GPU and a CUDA build")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SCALE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Both sides of the GEMV's 8-row tiles (1, 2, 4 tiles), of the switch to the tiled GEMM (32 | 33), of its
# 64-row blocks (64 | 65) and of its 128-row blocks (128 | 129), with partial blocks (300).
M_VALUES = [1, 2, 3, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 300]


def _check(qweight, scales, x, bias):
    """ours (CUDA) vs float64, vs plain PyTorch on CUDA in x's dtype, and vs the CPU kernel."""
    dtype = x.dtype
    w64 = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
    ref64 = x.double() @ w64.t() + (bias.double() if bias is not None else 0)
    dev = lambda t: None if t is None else t.cuda()  # noqa: E731
    ours = ops.qgemm(dev(x), dev(qweight), dev(scales), dev(bias))
    plain = torch.nn.functional.linear(dev(x), w64.to(dtype).cuda(), dev(bias))
    assert ours.is_cuda and ours.dtype == dtype and ours.shape == ref64.shape
    assert_lowp_close(ours.cpu(), ref64, plain.cpu())
    # Against the CPU kernel: each is held to its own device's plain PyTorch, so they may differ by at
    # most the sum of the two allowances. (The CPU kernel's blocked fp32 sums can be several times more
    # accurate than cuBLAS, so "2x the CPU kernel's error" would hold cuBLAS to a stricter rule than its own.)
    cpu = ops.qgemm(x, qweight, scales, bias)
    plain_cpu = torch.nn.functional.linear(x, w64.to(dtype), bias)
    assert_lowp_close(cpu, ref64, plain_cpu)
    ulp = torch.finfo(dtype).eps * ref64.abs().max().item()
    allowance = 2 * (max_abs_err(plain.cpu(), ref64) + max_abs_err(plain_cpu, ref64)) + 2 * ulp
    assert max_abs_err(ours.cpu(), cpu) <= allowance


@pytest.mark.parametrize("bits,group", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("k", [704, 2112, 1536])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES, ids=lambda d: f"scales-{str(d)[6:]}")
def test_qgemm_cuda_matches_reference(cuda_path, bits, group, k, dtype, scale_dtype):
    if group is not None and k % group:
        pytest.skip(f"K={k} is not a multiple of group {group}")
    n = 70  # two and a bit 32-row warp tiles: the tail rows
    qweight, scales = random_qweight(n, k, bits, group, scale_dtype)
    for m in M_VALUES:
        x = torch.randn(m, k).to(dtype)
        bias = torch.randn(n).to(dtype) if m % 2 else None
        _check(qweight, scales, x, bias)


@pytest.mark.parametrize("bits,group", [(4, 32), (4, None), (8, None), (8, 32)], ids=str)
@pytest.mark.parametrize("n,k", [(5000, 2112), (1000, 21504)])
def test_qgemm_cuda_large_shapes(cuda_path, bits, group, n, k):
    """Many rows (few K slices per block; many tiled-GEMM blocks) and a long K (many chunks per warp, the
    unrolled loop's tail; many pipeline stages)."""
    qweight, scales = random_qweight(n, k, bits, group, torch.bfloat16)
    for m in (1, 8, 16, 32, 40, 100, 200):
        x = torch.randn(m, k).to(torch.bfloat16)
        _check(qweight, scales, x, torch.randn(n).to(torch.bfloat16))


def test_qgemm_cuda_odd_runs_and_small_k(cuda_path):
    """K = 96 and 32: an odd number of 32-weight runs (the int4 chunk's missing second run), one run."""
    for k in (96, 32, 160):
        for bits in (4, 8):
            qweight, scales = random_qweight(45, k, bits, 32)
            for m, dtype in [(1, torch.float32), (7, torch.float32), (20, torch.float32), (20, torch.bfloat16),
                             (50, torch.bfloat16), (140, torch.float16)]:
                _check(qweight, scales, torch.randn(m, k).to(dtype), None)


@pytest.mark.parametrize("path", ["tiled", "wgmma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_qgemm_cuda_split_over_k(dtype, path):
    """Few weight tiles and a long K: the tiled GEMM (mma.sync, and the Hopper one where there is one) splits
    the tiles over K and adds the parts in order (deterministic); many tiles: whole waves unsplit and the last
    partial wave split."""
    if path == "wgmma" and not hopper_gemm_available():
        pytest.skip("the Hopper GEMM needs an sm_90 GPU and a build with sm_90a code")
    qops.qgemm_cuda_path(path)
    try:
        # 44000 rows: 172 (Hopper) or 344 tiles, the last 40 / 80 split in 3 parts of K = 1024's 16 stages, so
        # with group 128 (4 runs a scale) the second part starts at run 10, inside a group
        for (n, k, m), group in itertools.product([(200, 21504, 48), (300, 8192, 130), (44000, 1024, 40)], (32, 128)):
            qweight, scales = random_qweight(n, k, 4, group, dtype)
            x, bias = torch.randn(m, k).to(dtype), torch.randn(n).to(dtype)
            _check(qweight, scales, x, bias)
            q, s, xc = qweight.cuda(), scales.cuda(), x.cuda()
            assert_same(ops.qgemm(xc, q, s), ops.qgemm(xc, q, s))
    finally:
        qops.qgemm_cuda_path("auto")


def test_qgemm_cuda_route_rule():
    """"auto" takes the tiled GEMM up to 64 rows and dequantize + cuBLAS above on small weights, or, where there is
    the Hopper GEMM, that one up to 256 rows: each equals its forced route bit for bit."""
    hopper = hopper_gemm_available()
    qweight, scales = random_qweight(256, 512, 4, 32, torch.bfloat16)
    q, s = qweight.cuda(), scales.cuda()
    try:
        for m in (40, 64, 65, 200, 256, 300):
            x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
            auto = ops.qgemm(x, q, s)
            if hopper:
                qops.qgemm_cuda_path("wgmma" if m <= 256 else "dequant")
            else:
                qops.qgemm_cuda_path("tiled" if m <= 64 else "dequant")
            assert_same(auto, ops.qgemm(x, q, s))
            qops.qgemm_cuda_path("auto")
    finally:
        qops.qgemm_cuda_path("auto")


def test_qgemm_cuda_route_rule_large_weight():
    """On weights of 2^25 values or more "auto" takes the int16-activation GEMV at one row (qgemv_x16.cuh), the
    copy-engine GEMV at 2-8 rows (qgemv_bulk.cuh) and the x-resident GEMV at 9-16 (qgemv_resident.cuh: 512 16-row
    tiles: two an SM on GPUs of up to 256 SMs), and equals the forced route bit for bit, and stays within the error rule of plain
    PyTorch there (fewer checks than _check: the CPU kernel and float64 at this size are slow)."""
    n, k = 8192, 4096
    qweight, scales = random_qweight(n, k, 4, 32, torch.bfloat16)
    q, s = qweight.cuda(), scales.cuda()
    w64 = reference.dequantize(qweight, scales, torch.float64).cuda()  # [N, K]
    try:
        for m in (1, 2, 5, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            auto = ops.qgemm(x, q, s)
            qops.qgemm_cuda_path("x16" if m == 1 else "bulk" if m <= 8 else "resident")
            assert_same(auto, ops.qgemm(x, q, s))
            qops.qgemm_cuda_path("auto")
            ref64 = x.double() @ w64.t()
            plain = torch.nn.functional.linear(x, w64.to(torch.bfloat16))
            assert_lowp_close(auto.cpu(), ref64.cpu(), plain.cpu())
    finally:
        qops.qgemm_cuda_path("auto")


@pytest.mark.parametrize("k", [768, 1280, 2048])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_qgemm_cuda_resident_tiles_and_warps(k, scale_dtype):
    """The x-resident GEMV forced: 1000 rows (63 16-row tiles, the last part-filled) cut into (tile, span) units so
    that most warps start and end inside a tile (their partial sums added in warp order), K = 768, 1280 and 2048 (6,
    10 and 16 spans a tile), bf16 and fp16 scales. Within the error rule, deterministic, and 9 rows of a 16-row call
    equal to the same rows alone (both on two column tiles)."""
    n = 1000
    qweight, scales = random_qweight(n, k, 4, 32, scale_dtype)
    q, s = qweight.cuda(), scales.cuda()
    qops.qgemm_cuda_path("resident")
    try:
        for m in (1, 9, 16):
            x, bias = torch.randn(m, k).to(torch.bfloat16), torch.randn(n).to(torch.bfloat16)
            _check(qweight, scales, x, bias)
            xc = x.cuda()
            y = ops.qgemm(xc, q, s)
            assert_same(y, ops.qgemm(xc, q, s))
            if m > 9:
                assert_same(y[:9], ops.qgemm(xc[:9], q, s))
    finally:
        qops.qgemm_cuda_path("auto")


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (8, None), (8, 32)], ids=str)
def test_qgemm_cuda_x16_rows_and_outliers(bits, group):
    """The int16-activation GEMV: x blocks of 32 with one value 1000x the others (the rest rounded to int16 steps
    of the outlier's size) within the error rule; each row of a 2-row call equal to that row alone, bit for bit;
    a NaN or an inf in a row makes that row's outputs NaN (as the CPU kernel) and leaves the other row alone."""
    n, k = 300, 1664  # 52 runs: a lane's second span of 32 runs part-filled
    qweight, scales = random_qweight(n, k, bits, group, torch.bfloat16)
    q, s = qweight.cuda(), scales.cuda()
    qops.qgemm_cuda_path("x16")
    try:
        x = torch.randn(2, k)
        x[:, torch.randint(0, 32, (k // 32,)) + torch.arange(0, k, 32)] *= 1000.0
        x = x.to(torch.bfloat16)
        _check(qweight, scales, x, torch.randn(n).to(torch.bfloat16))
        xc = x.cuda()
        both = ops.qgemm(xc, q, s)
        for m in range(2):
            assert_same(both[m:m + 1], ops.qgemm(xc[m:m + 1], q, s))
        for bad in (float("nan"), float("inf")):
            xb = xc.clone()
            xb[0, 100] = bad
            y = ops.qgemm(xb, q, s)
            assert y[0].isnan().all()
            assert_same(y[1], both[1])
    finally:
        qops.qgemm_cuda_path("auto")


def test_qgemm_cuda_misaligned_x(cuda_path):
    """An x whose data does not start on a 16-byte boundary, on every path: equal to an aligned copy."""
    qweight, scales = random_qweight(100, 256, 4, 32, torch.bfloat16)
    qweight, scales = qweight.cuda(), scales.cuda()
    for m in (3, 40, 200):
        buf = torch.randn(m * 256 + 1, device="cuda", dtype=torch.bfloat16)
        x = buf[1:].view(m, 256)
        assert_same(ops.qgemm(x, qweight, scales), ops.qgemm(x.clone(), qweight, scales))


def test_qgemm_cuda_deterministic_and_leading_dims():
    qweight, scales = random_qweight(300, 1536, 4, 32, torch.bfloat16)
    qweight, scales = qweight.cuda(), scales.cuda()
    for m in (1, 16, 100):
        x = torch.randn(2, m, 1536, device="cuda", dtype=torch.bfloat16)
        y = ops.qgemm(x, qweight, scales)
        assert y.shape == (2, m, 300)
        assert_same(y, ops.qgemm(x, qweight, scales))
        assert_same(y.reshape(-1, 300), ops.qgemm(x.reshape(-1, 1536), qweight, scales))
    assert ops.qgemm(torch.randn(0, 1536, device="cuda"), qweight, scales).shape == (0, 300)


def test_qgemm_cuda_misaligned_qweight(cuda_path):
    """A qweight whose data does not start on a 16-byte boundary (a slice) gives the same result."""
    qweight, scales = random_qweight(40, 256, 4, 64)
    buf = torch.empty(qweight.numel() + 3, dtype=torch.uint8, device="cuda")
    shifted = buf[3:].view(qweight.shape)
    shifted.copy_(qweight.cuda())
    for m, dtype in [(2, torch.bfloat16), (50, torch.bfloat16), (50, torch.float32)]:
        x = torch.randn(m, 256, device="cuda", dtype=dtype)
        assert_same(ops.qgemm(x, shifted, scales.cuda()), ops.qgemm(x, qweight.cuda(), scales.cuda()))


def test_qgemm_cuda_graph_capture():
    """No host synchronisation: the op can be captured in a CUDA graph and replayed."""
    qweight, scales = random_qweight(64, 512, 4, 32, torch.bfloat16)
    qweight, scales = qweight.cuda(), scales.cuda()
    for m in (4, 64):
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        want = ops.qgemm(x, qweight, scales)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ops.qgemm(x, qweight, scales)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            out = ops.qgemm(x, qweight, scales)
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert_same(out, ops.qgemm(x, qweight, scales))
        assert not torch.equal(out, want)


@pytest.mark.parametrize("arg", ["qweight", "scales", "bias"])
def test_qgemm_cuda_argument_on_cpu_is_named(arg):
    qweight, scales = random_qweight(8, 64, 4, 32)
    args = dict(x=torch.randn(2, 64, device="cuda"), qweight=qweight.cuda(), scales=scales.cuda(),
                bias=torch.randn(8, device="cuda"))
    args[arg] = args[arg].cpu()
    with pytest.raises(RuntimeError, match=f"gemma4::qgemm: {arg} must be on (CUDA|cuda)"):
        torch.ops.gemma4.qgemm(**args)


def test_qgemm_cuda_x_on_cpu_with_cuda_weights_is_named():
    """The CUDA weights pick the CUDA kernel, which names x."""
    qweight, scales = random_qweight(8, 64, 4, 32)
    with pytest.raises(RuntimeError, match="gemma4::qgemm: x must be on CUDA"):
        torch.ops.gemma4.qgemm(torch.randn(2, 64), qweight.cuda(), scales.cuda(), None)


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(2, 48)), "K must be a positive multiple of 32"),
    (dict(scales=torch.rand(8, 4)), "scales.size\\(1\\) must divide K"),
    (dict(x=torch.randn(2, 64, dtype=torch.float64)), "x must be float32, bfloat16 or float16"),
    (dict(bias=torch.randn(8, dtype=torch.bfloat16)), "bias must be Float"),
])
def test_qgemm_cuda_bad_inputs(args, match):
    base = dict(x=torch.randn(2, 64), qweight=random_qweight(8, 64, 4, 32)[0], scales=torch.rand(8, 2), bias=None)
    base.update(args)
    cuda_args = {k: (v.cuda() if v is not None else None) for k, v in base.items()}
    with pytest.raises(RuntimeError, match=match):
        torch.ops.gemma4.qgemm(**cuda_args)


def test_qgemm_cuda_opcheck():
    qweight, scales = random_qweight(20, 96, 4, 32, torch.bfloat16)
    qweight, scales = qweight.cuda(), scales.cuda()
    x = torch.randn(3, 96, dtype=torch.bfloat16, device="cuda")
    bias = torch.randn(20, dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x, qweight, scales, bias))
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x.float().requires_grad_(), qweight, scales, None))
    x8 = torch.randn(40, 96, device="cuda")  # the dequantize + cuBLAS path
    q8, s8 = random_qweight(20, 96, 8, None)
    torch.library.opcheck(torch.ops.gemma4.qgemm, (x8.requires_grad_(), q8.cuda(), s8.cuda(), None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [6, 300])
def test_qgemm_cuda_backward_matches_reference(dtype, m):
    qweight, scales = random_qweight(300, 128, 4, 64)  # more rows than the backward's 256-row slab
    qweight, scales = qweight.cuda(), scales.cuda()
    x = torch.randn(m, 128, device="cuda").to(dtype).requires_grad_()
    bias = torch.randn(300, device="cuda").to(dtype).requires_grad_()
    g = torch.randn(m, 300, device="cuda").to(dtype)
    ops.qgemm(x, qweight, scales, bias).backward(g)
    w = reference.dequantize(qweight, scales, torch.float64)  # [N, K]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x.grad.double(), (g.double() @ w).to(dtype).double(), **tol)
    torch.testing.assert_close(bias.grad.double(), g.double().sum(0).to(dtype).double(), **tol)
    assert x.grad.is_cuda and x.grad.dtype == dtype
