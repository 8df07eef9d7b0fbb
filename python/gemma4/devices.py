"""The one parser for device and dtype arguments ("auto", names, torch objects), used by the loaders,
generate's helpers and the command line, so that every entry point accepts and refuses the same things."""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["DTYPE_NAMES", "parse_device", "parse_dtype", "available_memory"]

# The dtypes a Gemma 4 model runs in (the operators' floating-point dtypes), by their torch names.
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "float64": torch.float64}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "fp64": "float64", "double": "float64"}


def parse_device(device: Any, argument: str = "device") -> torch.device:
    """A torch.device from a device, its name, "auto" (CUDA when available, else CPU) or None (CPU).

    Raises ValueError naming `argument` for an unknown name, a device type gemma4 has no kernels for,
    or a CUDA device that is not present.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{argument}={device!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{argument}={device!r}: CUDA is not available here (torch {torch.__version__}"
                             f"{'' if torch.version.cuda else ', a CPU-only build'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{argument}={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        from gemma4._native import build_info  # noqa: PLC0415  (the compiled parts load with the ops)
        if not build_info["cuda"]:
            raise ValueError(f"{argument}={device!r}: this gemma4 was built without CUDA kernels (its torch had "
                             "no CUDA, or nvcc was not found); rebuild it here with -DGEMMA4_CUDA=ON "
                             "(docs/install.md)")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"{argument}={device!r}: gemma4 runs on cpu or cuda")
    return dev


def parse_dtype(dtype: Any, argument: str = "dtype", auto: torch.dtype | None = None) -> torch.dtype | None:
    """A torch dtype from a dtype, its name ("bfloat16", "torch.bfloat16", "bf16") or "auto"/None (-> `auto`).

    Raises ValueError naming `argument` for anything that is not one of DTYPE_NAMES.
    """
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return auto
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name not in DTYPE_NAMES:
            raise ValueError(f"{argument}={dtype!r}: expected 'auto' or one of {', '.join(DTYPE_NAMES)}")
        return DTYPE_NAMES[name]
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"{argument}={dtype}: gemma4 models run in {', '.join(DTYPE_NAMES)}")
        return dtype
    raise TypeError(f"{argument}: expected a torch.dtype or its name, got {type(dtype).__name__}")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (free GPU memory; the kernel's MemAvailable on the
    CPU), or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
