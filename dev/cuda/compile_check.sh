#!/usr/bin/env bash
# Compile-check CUDA sources here (no GPU, no CMake CUDA toolkit): nvcc against the CUDA torch in
# /work/venv-cuda, sm_90 (ARCH_FLAGS="-gencode=arch=compute_90a,code=sm_90a -DGEMMA4_SM90A" for *_sm90a.cu), with the register / spill report.   dev/cuda/compile_check.sh csrc/norm/rms_norm_cuda.cu ...
set -euo pipefail
cd "$(dirname "$0")/../.."
TP=/work/venv-cuda/lib/python3.11/site-packages/torch
NV=/work/venv-cuda/lib/python3.11/site-packages/nvidia/cu13
PYINC=$(/work/venv-cuda/bin/python -c "import sysconfig;print(sysconfig.get_paths()['include'])")
mkdir -p build/cc
for f in "$@"; do
  o=build/cc/$(basename "$f" .cu).o
  ${CCACHE:-$(command -v ccache || true)} nvcc -std=c++20 -O3 ${ARCH_FLAGS:--arch=sm_90} --expt-relaxed-constexpr -Xptxas -v ${EXTRA_INC:-} -Icsrc -I$TP/include \
    -I$TP/include/torch/csrc/api/include -I$NV/include -I$PYINC -DGEMMA4_WITH_CUDA -c "$f" -o "$o" \
    2> >(grep -vE "^ptxas info    : (Function properties|Compile time)" >&2)
  echo "ok $f"
done
