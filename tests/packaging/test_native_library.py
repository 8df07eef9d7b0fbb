"""The built libraries share the process's libstdc++ rather than carrying a copy of it.

A toolchain with only a static libstdc++ copies std::ostream into the library; that copy is never
initialised, and the first error message formatting a number (every shape check) kills the process.
This is what happened on the GPU machine (its custom GCC has libstdc++.a alone) until CMakeLists.txt
linked torch's libstdc++.so.6 explicitly.
"""
import os
import shutil
import subprocess

import pytest
import torch

from gemma4 import _native

# std::ostream::_M_insert<long>: the number formatting the checks' messages call.
OSTREAM_INSERT_LONG = "_ZNSo9_M_insertIlEERSoT_"


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
@pytest.mark.parametrize("library", ["ops", "_C"])
def test_library_defines_no_libstdcxx_of_its_own(library):
    path = _native.OPS_LIBRARY if library == "ops" else _native._C.__file__
    defined = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    assert OSTREAM_INSERT_LONG not in defined, f"{os.path.basename(path)} carries its own libstdc++ (linked statically)"


def test_shape_error_formats_numbers():
    """The crash's trigger: a check message with sizes in it raises one clear error."""
    with pytest.raises(RuntimeError, match=r"weight must have x.size\(-1\) = 16 elements, got shape \[15\]"):
        torch.ops.gemma4.rms_norm(torch.randn(4, 16), torch.randn(15), 1e-6)


def test_build_info_says_whether_hopper_kernels_are_built():
    """build_info["sm90a"]: whether the sm_90a-only kernels (qgemm_wgmma_sm90a.cu) are in the library; only a CUDA
    build can have them (tests/quant/common.py's hopper_gemm_available reads it to expect the wgmma route)."""
    info = _native.build_info
    assert isinstance(info["sm90a"], bool)
    assert info["cuda"] or not info["sm90a"]
