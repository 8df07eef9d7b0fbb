"""Which kernel computes y = x @ W.T (+ b) on the CPU: gemma4::linear or torch's F.linear.

One place for the rule, with no gemma4 imports but the leaf gemma4.switch, so that every caller (modeling.linear's Linear, the fused
loss's head, LoRA's base GEMM, float32_gemm's bf16 path) asks the same question without import cycles.
The thresholds come from benchmarks/bench_linear_cpu.py (docs/performance.md has the numbers):

- CPU, float32 or bfloat16 weights and input of the same dtype, a contiguous weight;
- at most 8 rows of input (decode; kGemvMaxRows in csrc/linear/linear_cpu.cpp): ours streams the weights
  once, bf16 widened in registers (about 2x torch's bf16 rate; in fp32 3-4x MKL's sgemv on weights coming from DRAM, as in a
  decode step, and 1.2-2x on weights in the caches, from 16 KB up: 2026-12-04, 2-core AVX-512 EPYC);
- more rows (prefill): ours runs its packed GEMM (csrc/linear/linear_gemm.h), bf16 widened while the
  weights are packed: several times faster than torch's bf16 matmul on CPUs without AVX512-BF16, and
  faster than MKL's multi-threaded sgemm at most Gemma 4 projections in fp32 (the op itself keeps the
  sgemm for the shapes where it measured faster: with AVX-512 its 8 x 32 tile takes every shape, 1.8-2.7x MKL at
  128 rows on the 2-core Zen 5 EPYC and 0.76-1.13x (about 0.9x) on an Intel Xeon, where MKL runs AVX-512 too).
- bf16 on a CPU with a native bf16 GEMM (oneDNN on AVX512-BF16/AMX): torch's GEMM runs bf16 dot products
  at about twice the float32 FMA rate, 3.4-3.7x ours at 1024 rows (2-core AMD EPYC with AVX512-BF16,
  1536 <-> 6144); ours keeps only up to NATIVE_BF16_ROWS rows, where streaming the weights once wins
  (1 row: 2.2-2.6x torch's; 4 rows: 1.1x; 6 rows: 0.8x).
"""
from __future__ import annotations

import torch

from gemma4.switch import Switch

__all__ = ["NATIVE_BF16_ROWS", "NATIVE_LOWP_GEMM", "gemma4_kernels_enabled", "own_bf16_kernels",
           "torch_linear_only", "uses_gemma4_kernel"]

NATIVE_BF16_ROWS = 4  # bf16 where torch has a native bf16 GEMM: ours up to this many rows


def _native_lowp_gemm() -> dict:
    """Whether torch's CPU GEMM is native (oneDNN) for bf16 and fp16 on this CPU."""
    try:
        return {torch.bfloat16: bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                torch.float16: bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())}
    except (AttributeError, RuntimeError):  # a torch without oneDNN: assume native, change nothing
        return {torch.bfloat16: True, torch.float16: True}


NATIVE_LOWP_GEMM = _native_lowp_gemm()  # decided once at import (a constant for torch.compile)
_GEMMA4_KERNELS = Switch()  # off inside torch_linear_only()


def torch_linear_only():
    """Run every Linear through F.linear inside the block (benchmarks and tests compare the two)."""
    return _GEMMA4_KERNELS.off()


def gemma4_kernels_enabled() -> bool:
    """False inside torch_linear_only()."""
    return _GEMMA4_KERNELS.on


def uses_gemma4_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where gemma4::linear is the faster choice for y = x @ weight.T (see the module docstring)."""
    if not _GEMMA4_KERNELS.on or x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if torch.is_autocast_enabled("cpu"):  # F.linear follows autocast's dtype policy; our op does not
        return False
    if x.dtype not in (torch.float32, torch.bfloat16) or not weight.is_contiguous():
        return False
    if x.dtype == torch.float32:
        return True  # decode and prefill (the op itself keeps MKL's sgemm where it measured faster)
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    return rows <= NATIVE_BF16_ROWS or not NATIVE_LOWP_GEMM[torch.bfloat16]


def own_bf16_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """gemma4's CPU linear ops (gemma4::linear, linear_grad_input) can take this bf16 GEMM: both bf16, a
    contiguous weight, on the CPU. (fp16 they do not take.) Used where the GEMM must run in float32
    anyway (float32_gemm), so speed thresholds do not apply."""
    return x.dtype == weight.dtype == torch.bfloat16 and weight.is_contiguous() and x.device.type == "cpu"
