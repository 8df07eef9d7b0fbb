"""Argument checks for the fake (meta) kernels, with the C++ checks' wording (csrc/common/checks.h).

A fake kernel runs instead of the C++ one under torch.compile tracing and for meta tensors; without
these checks a bad call would trace (or return uninitialised memory for a cpu/meta mix) and fail
only later, or never. Each op's fake kernel calls the checks of its module once; the C++ seams
(csrc/<family>/<family>_checks.h) remain the checks of real calls.
"""
from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.bfloat16: "BFloat16", torch.float16: "Half",
          torch.int64: "Long", torch.bool: "Bool"}


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def fail(op: str, message: str) -> None:
    raise RuntimeError(f"{op}: {message}")


def same_device(op: str, first: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Each of `others` (None skipped) on `first`'s device."""
    for name, t in others.items():
        if t is not None and t.device != first.device:
            fail(op, f"{name} must be on {first.device} like the input, got {t.device}")


def floating(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOATS:
        fail(op, f"{name} must be float32, float64, bfloat16 or float16, got {dtype_name(t.dtype)}")


def dtype(op: str, name: str, t: torch.Tensor, want: torch.dtype) -> None:
    if t.dtype != want:
        fail(op, f"{name} must be {dtype_name(want)}, got {dtype_name(t.dtype)}")


def dim(op: str, name: str, t: torch.Tensor, n: int) -> None:
    if t.dim() != n:
        fail(op, f"{name} must have {n} dimensions, got shape {list(t.shape)}")


def size(op: str, name: str, t: torch.Tensor, d: int, want) -> None:
    if t.shape[d] != want:
        fail(op, f"{name}.size({d}) must be {want}, got shape {list(t.shape)}")


def like(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """t has ref's dtype and shape."""
    if t.dtype != ref.dtype:
        fail(op, f"{name} must have {ref_name}'s dtype {dtype_name(ref.dtype)}, got {dtype_name(t.dtype)}")
    if t.shape != ref.shape:
        fail(op, f"{name} must have {ref_name}'s shape {list(ref.shape)}, got {list(t.shape)}")
