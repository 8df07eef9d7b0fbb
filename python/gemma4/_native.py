"""Loads the compiled parts: gemma4._C (build info) and libgemma4_ops.so (the operators).

A developer build in its own folder (dev/build.sh) is picked up from $GEMMA4_LIB_DIR; otherwise
the installed package's files are used.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_REBUILD = "rebuild it: `make build` (or `pip install --no-build-isolation -e .`) in the gemma4 checkout"


def _import_c():
    lib_dir = os.environ.get("GEMMA4_LIB_DIR")
    if not lib_dir:
        try:
            from gemma4 import _C  # noqa: PLC0415
        except ImportError as e:
            raise ImportError(f"gemma4's compiled extension gemma4._C is missing or broken ({e}); {_REBUILD}") from e
        return _C
    found = glob.glob(os.path.join(lib_dir, "_C*.so"))
    if not found:
        raise ImportError(f"GEMMA4_LIB_DIR={lib_dir} holds no _C*.so; run dev/build.sh first")
    spec = importlib.util.spec_from_file_location("gemma4._C", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["gemma4._C"] = module
    return module


_C = _import_c()
build_info = _C.build_info()

if build_info["torch_version"] != torch.__version__:
    raise ImportError(
        f"gemma4 was built against torch {build_info['torch_version']} but torch {torch.__version__} is "
        f"installed; {_REBUILD}"
    )

_features = _C.cpu_features()
if build_info["cpu_baseline"].startswith("avx2") and not (_features.get("avx2") and _features.get("fma")):
    raise ImportError("gemma4's CPU kernels were built for AVX2+FMA, which this CPU lacks; "
                      "rebuild on this machine")


def _keep_freed_memory() -> bool:
    """Keep up to GEMMA4_KEEP_FREED_MB (default 64; 0: leave malloc alone) of freed heap memory for reuse, so
    activations allocated again and again do not come back as fresh pages, each first write a page fault
    (glibc only; csrc/module.cpp says why and how much it costs; docs/performance.md)."""
    raw = os.environ.get("GEMMA4_KEEP_FREED_MB", "64")
    if not raw.isdigit() or int(raw) > 2047:
        raise ImportError(f"GEMMA4_KEEP_FREED_MB={raw!r}: expected a whole number of MB from 0 to 2047")
    return int(raw) > 0 and _C.keep_freed_memory(int(raw) << 20)


keeps_freed_memory = _keep_freed_memory()

OPS_LIBRARY = os.path.join(os.path.dirname(_C.__file__), "libgemma4_ops.so")
torch.ops.load_library(OPS_LIBRARY)
