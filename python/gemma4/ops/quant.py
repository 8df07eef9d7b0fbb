"""Weight-only quantized linear: ``gemma4::qgemm`` and its fake kernel.

The C++ ops are csrc/quant/qgemm_cpu.cpp (kernels in qgemm_kernels.h) and qgemm_cuda.cu, the autograd
qgemm_autograd.cpp; the plain-PyTorch definition is ``reference.qgemm``. The packed layout is described in gemma4/quant/formats.py.
"""
from __future__ import annotations

import torch

from gemma4 import _native  # noqa: F401  (loads the operator library)

__all__ = ["qgemm", "qgemm_cpu_isa", "qgemm_cuda_path"]


def qgemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
          bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ dequant(qweight, scales)^T (+ bias)`` with the weights dequantized in registers.

    ``dequant(q, s)[n, k] = q[n, k] * s[n, k // group]`` with ``group = K // scales.shape[1]`` (a
    multiple of 32 dividing K: 32, 64, 128, ..., or K for one scale per output channel). The product is
    exact in float32; the sum accumulates in float32 and is rounded once to ``x.dtype``.

    Args:
        x: ``[..., K]`` float32/bfloat16/float16 activations (made contiguous), K a multiple of 32.
        qweight: int4 as uint8 ``[N, K/2]`` (each 32 weights = 16 bytes, byte j = weight j in the low
            nibble and weight j+16 in the high nibble, stored as q+8 -- GGUF Q4_0's order), or int8
            ``[N, K]``; on the CPU also the 16-row tiled int4 layout of ``formats.tile16`` (uint8
            ``[N/16, K/8, 64]``), which QuantLinear uses there.
        scales: ``[N, K // group]`` float32/bfloat16/float16 (tiled: ``[N/16, K/32, 16]``).
        bias: ``[N]`` in ``x.dtype`` or None.

    Returns:
        ``[..., N]`` in ``x.dtype``. Differentiable in ``x`` (and ``bias``); the quantized weights are
        frozen.
    """
    return torch.ops.gemma4.qgemm(x.contiguous(), qweight, scales, bias)


def qgemm_cpu_isa(request: str = "") -> str:
    """The CPU kernels' instruction set: ``""`` reports it; ``"auto"``, ``"avx2"``, ``"avx512"`` or
    ``"avx512vnni"`` selects it (AVX-512 only where the CPU and OS support it, VNNI where the CPU has
    AVX512_VNNI; ``"auto"`` picks the best). Returns the one in use.

    ``"auto"`` (the default) also lets bf16 activations of 64 rows or more, on a CPU with a native bf16
    GEMM (AVX512-BF16 or AMX), dequantize the weight to bf16 a slab at a time and use torch's GEMM (2-3x
    our kernels there from 96 rows). On a CPU without AVX-512 it lets 48 rows or more of bf16/fp16 activations take our
    packed fp32 GEMM, which dequantizes the weight into its register-tile panels as it packs them
    (1.05-1.4x the integer kernels there). A forced ``"avx2"`` / ``"avx512"`` / ``"avx512vnni"`` keeps our kernels at
    every row count, ``"dequant"`` forces the bf16 route for bf16 activations, and ``"packed"`` the packed GEMM for
    bf16/fp16 activations at every row count (tests reach every path this way)."""
    return torch.ops.gemma4.qgemm_cpu_isa(request)


def qgemm_cuda_path(request: str = "") -> str:
    """The CUDA kernels' route for bf16/fp16 activations: ``""`` reports it; ``"auto"`` (the default) picks by shape
    (up to 32 rows a GEMV, its shared-memory ring version for int4 on some row counts; then the tiled tensor-core
    GEMM on the packed weight up to 64 rows, and up to 128 on large weights -- on an sm_90 GPU its ``wgmma`` version
    from 17 rows up to 256, from 8 for int8 on large weights --; above, dequantize to a 16-bit workspace and
    cuBLAS). ``"tiled"`` or ``"wgmma"`` (where built and on sm_90) forces that GEMM at every row count,
    ``"dequant"`` forces dequantize + cuBLAS above 32 rows, ``"ring"`` the ring GEMV and ``"bulk"`` the bulk-copy
    GEMV (where the scales' layout allows it) at every row count up to 32, and ``"x16"`` the int16-activation GEMV
    where it fits (1-2 rows, K a multiple of 32), ``"resident"`` the int4 GEMV that holds x in shared memory where
    it fits (up to 16 rows, K a multiple of 32 and short enough) (tests reach every path this way). Returns the
    route in use."""
    return torch.ops.gemma4.qgemm_cuda_path(request)


def _check_args(x, qweight, scales, bias) -> None:
    """The C++ op's argument checks, for the fake kernel (meta tensors, torch.compile tracing)."""
    op = "gemma4::qgemm"
    for name, t in (("qweight", qweight), ("scales", scales), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{op}: {name} must be on {x.device} like x, got {t.device}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if qweight.dim() == 3:  # the 16-row tiled int4 layout (CPU)
        _check_tiled(op, x, qweight, scales, bias)
        return
    if qweight.dtype not in (torch.uint8, torch.int8) or qweight.dim() != 2:
        raise RuntimeError(f"{op}: qweight must be uint8 (packed int4) or int8, 2-D, got {qweight.dtype} "
                           f"{tuple(qweight.shape)}")
    if scales.dtype not in (torch.float32, torch.bfloat16, torch.float16) or scales.dim() != 2:
        raise RuntimeError(f"{op}: scales must be float32, bfloat16 or float16, 2-D, got {scales.dtype} "
                           f"{tuple(scales.shape)}")
    k, n = x.shape[-1], qweight.shape[0]
    torch._check(k % 32 == 0, lambda: f"{op}: the input size K must be a positive multiple of 32, got {k}")
    torch._check(qweight.shape[1] == (k // 2 if qweight.dtype == torch.uint8 else k),
                 lambda: f"{op}: qweight.size(1) does not match K = {k}")
    torch._check(scales.shape[0] == n and k % scales.shape[1] == 0 and (k // scales.shape[1]) % 32 == 0,
                 lambda: f"{op}: scales.size(1) must divide K = {k} into groups of a multiple of 32 weights")
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (n,)):
        raise RuntimeError(f"{op}: bias must be {x.dtype} [{n}], got {bias.dtype} {tuple(bias.shape)}")


def _check_tiled(op, x, qweight, scales, bias) -> None:
    if x.device.type != "cpu" and x.device.type != "meta":
        raise RuntimeError(f"{op}: the 16-row tiled int4 layout (a 3-D qweight) runs on the CPU only")
    k = x.shape[-1]
    if qweight.dtype != torch.uint8 or scales.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(f"{op}: a 3-D qweight (the 16-row tiled layout) must be uint8 with float scales, got "
                           f"{qweight.dtype} and {scales.dtype}")
    t = qweight.shape[0]
    torch._check(k % 32 == 0, lambda: f"{op}: the input size K must be a positive multiple of 32, got {k}")
    torch._check(tuple(qweight.shape[1:]) == (k // 8, 64) and scales.dim() == 3
                 and tuple(scales.shape) == (t, k // 32, 16),
                 lambda: f"{op}: tiled qweight must be [N/16, {k // 8}, 64] with scales [N/16, {k // 32}, 16], got "
                         f"{tuple(qweight.shape)} and {tuple(scales.shape)}")
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (16 * t,)):
        raise RuntimeError(f"{op}: bias must be {x.dtype} [{16 * t}], got {bias.dtype} {tuple(bias.shape)}")


@torch.library.register_fake("gemma4::qgemm")
def _qgemm_fake(x, qweight, scales, bias):
    _check_args(x, qweight, scales, bias)
    n = qweight.shape[0] * 16 if qweight.dim() == 3 else qweight.shape[0]
    return x.new_empty((*x.shape[:-1], n))


# Autograd (the weights are frozen: grad_x = grad_out @ dequant(W), a slab of rows at a time) is registered in
# C++, csrc/quant/qgemm_autograd.cpp, so that calls under torch.no_grad skip Python.
