"""Shared helpers for the quantization tests: random quantized weights in every supported format."""
import pytest
import torch

from gemma4.ops import quant as qops
from gemma4.quant import formats

# (bits, group) for every format the kernels serve; group None = one scale per output channel.
FORMATS = [(4, 32), (4, 64), (4, 128), (8, None), (8, 32)]
FORMAT_IDS = ["int4-g32", "int4-g64", "int4-g128", "int8-channel", "int8-g32"]


def random_qweight(n: int, k: int, bits: int, group: int | None, scale_dtype=torch.float32):
    """Random levels over the full range (all 16 int4 levels appear) and random positive/negative scales
    of varied magnitude: (qweight, scales)."""
    g = k // (group or k)
    if bits == 4:
        q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
        qweight = formats.pack_int4(q)
    else:
        q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        qweight = q
    mag = torch.exp(torch.randn(n, g) * 0.5) * (0.02 if bits == 4 else 0.002)
    sign = torch.where(torch.rand(n, g) < 0.1, -1.0, 1.0)  # negative scales are legal (Q4_0 writes them)
    return qweight, (mag * sign).to(scale_dtype)


def available_isas():
    isas = ["avx2"]
    for isa in ("avx512", "avx512vnni"):
        try:
            qops.qgemm_cpu_isa(isa)
            isas.append(isa)
        except RuntimeError:
            pass
        finally:
            qops.qgemm_cpu_isa("auto")
    return isas


@pytest.fixture(params=["avx2", "avx512", "avx512vnni", "dequant"])
def cpu_isa(request):
    """Runs a test once per CPU kernel instruction set (AVX-512 and VNNI skipped where the CPU lacks them),
    and once with bf16 activations on the dequantize-then-GEMM route (torch's bf16 GEMM: any CPU can run it)."""
    if request.param not in available_isas() + ["dequant"]:
        pytest.skip(f"this CPU has no {request.param}")
    qops.qgemm_cpu_isa(request.param)
    yield request.param
    qops.qgemm_cpu_isa("auto")


@pytest.fixture(params=["auto", "tiled", "ring"])
def cuda_path(request):
    """Runs a CUDA test once on the route the shape picks (small test shapes: the register-loading GEMV up to
    16 rows and the ring GEMV to 32 for int4, the tiled GEMM up to 64 rows, dequantize + cuBLAS above), once with
    the tiled tensor-core GEMM forced at every row count above 32, and once with the ring GEMV forced at every
    row count up to 32."""
    qops.qgemm_cuda_path(request.param)
    yield request.param
    qops.qgemm_cuda_path("auto")
