"""Builds a numbered dev version as a JIT torch extension (same flags as the shipped kernels)."""
import os
import torch.utils.cpp_extension as ce
HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-std=c++20"]
def load(name):
    os.environ.setdefault("MAX_JOBS", "2")
    return ce.load(name=f"attn_dev_{name}", sources=[os.path.join(HERE, f"{name}.cpp")], extra_cflags=FLAGS,
                   build_directory=_bdir(name), verbose=False)
def _bdir(name):
    d = os.path.join("/tmp", "attn_dev_build", name); os.makedirs(d, exist_ok=True); return d
