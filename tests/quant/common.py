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


@pytest.fixture(params=["avx2", "avx512", "avx512vnni", "dequant", "packed"])
def cpu_isa(request):
    """Runs a test once per CPU kernel instruction set (AVX-512 and VNNI skipped where the CPU lacks them),
    once with bf16 activations on the dequantize-then-GEMM route (torch's bf16 GEMM: any CPU can run it), and once
    with bf16/fp16 activations on the packed-GEMM route (the weight dequantized into our fp32 GEMM's panels: AVX2, any
    x86-64 CPU)."""
    if request.param not in available_isas() + ["dequant", "packed"]:
        pytest.skip(f"this CPU has no {request.param}")
    qops.qgemm_cpu_isa(request.param)
    yield request.param
    qops.qgemm_cpu_isa("auto")


@pytest.fixture(params=["auto", "tiled", "ring", "bulk", "wgmma", "x16", "resident"])
def cuda_path(request):
    """Runs a CUDA test once on the route the shape picks (small test shapes: the register-loading GEMV up to
    16 rows and the ring GEMV to 32 for int4, the tiled GEMM up to 64 rows -- on an sm_90 device of a build with
    sm_90a code the Hopper GEMM, up to 256 --, dequantize + cuBLAS above), once with the mma.sync tiled GEMM forced
    at every row count above 32, once with the Hopper (wgmma) tiled GEMM forced there (skipped where there is
    none), and once with the ring GEMV and once with the bulk-copy GEMV (qgemv_bulk.cuh, sm_90; where the scales
    do not fit it, the shape's own route) forced at every row count up to 32, and once with the int16-activation
    GEMV (qgemv_x16.cuh) forced where it fits (1-2 rows of bf16/fp16 x), and once with the x-resident int4 GEMV
    (qgemv_resident.cuh) forced where it fits (up to 16 rows of bf16/fp16 x, K short enough for shared memory)."""
    if request.param == "wgmma" and not hopper_gemm_available():
        pytest.skip("the Hopper GEMM needs an sm_90 GPU and a build with sm_90a code")
    qops.qgemm_cuda_path(request.param)
    yield request.param
    qops.qgemm_cuda_path("auto")


def hopper_gemm_available() -> bool:
    """True where the CUDA qgemm has its wgmma GEMM (qgemm_wgmma_sm90a.cu): an sm_90 device, sm_90a code built."""
    from gemma4._native import build_info

    return (bool(build_info.get("sm90a")) and torch.cuda.is_available()
            and torch.cuda.get_device_capability() == (9, 0))


def experts_loop(x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales,
                 activation="gelu_tanh"):
    """QuantExperts.forward before gemma4::moe_experts_quant: a Python loop over the chosen experts calling
    gemma4.ops.qgemm, gated_activation and qgemm on each one's tokens, fp32 accumulation of the routed outputs.
    The oracle of the fused op (equal bit for bit on CPU); it looks the ops up on gemma4.ops at each call, so a
    patched qgemm / gated_activation (gguf_support.llamacpp_cpu_numerics) reaches the experts through it."""
    import gemma4.ops

    im = gate_up_qweight.shape[1] // 2
    top_k = indices.shape[1]
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # routed (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=gate_up_qweight.shape[0]).tolist()
    w_flat = weights.reshape(-1)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [N, H]
    start = 0
    for e, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]
        start += count
        token = pairs // top_k
        gate_up = gemma4.ops.qgemm(x[token], gate_up_qweight[e], gate_up_scales[e])  # [n_e, 2Im]
        hidden = gemma4.ops.gated_activation(gate_up[:, :im], gate_up[:, im:], activation)  # [n_e, Im]
        y = gemma4.ops.qgemm(hidden, down_qweight[e], down_scales[e])  # [n_e, H]
        out.index_add_(0, token, y.float() * w_flat[pairs].float()[:, None])
    return out.to(x.dtype)
