"""CUDA gemma4::attention / attention_backward: every correctness case in one GPU call.

Runs tests/ops/test_attention_cuda.check_case (forward, lse, CPU agreement and gradients against the
float64 reference, bf16/fp16 by the 2x-plain-PyTorch rule) over test_attention.SHAPES plus the CUDA
path shapes, four dtypes, contiguous and strided inputs, and the backward determinism check. Prints a
line per failure and a summary; exits 1 on any failure. Usage (repo root, CUDA build):
  GEMMA4_LIB_DIR=build/x PYTHONPATH=python:. python3 dev/attention_cuda/check.py
"""
import sys
import traceback

import torch

from tests.ops.test_attention import SHAPES
from tests.ops.test_attention_cuda import DECODE, FLASH, check_case, test_cuda_backward_deterministic

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def main():
    torch.manual_seed(0)
    fails = n = 0
    for shape in SHAPES + FLASH + DECODE:
        for dtype in DTYPES:
            for strided in (False, True):
                if strided and shape[5] < 8:
                    continue
                n += 1
                tag = f"{shape} {str(dtype)[6:]} {'strided' if strided else 'contig'}"
                try:
                    err = check_case(shape, dtype, strided)
                    print(f"ok   {tag}  max|out-ref64| {err:.2e}", flush=True)
                except Exception as e:  # noqa: BLE001 - report every failing case, then exit 1
                    fails += 1
                    print(f"FAIL {tag}: {type(e).__name__}: {str(e)[:400]}", flush=True)
                    if fails <= 3:
                        traceback.print_exc()
    n += 1
    try:
        test_cuda_backward_deterministic()
        print("backward deterministic: True")
    except AssertionError:
        fails += 1
        print("backward deterministic: False")
    print(f"SUMMARY: {n - fails}/{n} cases passed, {fails} failures")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
