#!/usr/bin/env bash
# One device call for the CUDA qgemm: build only csrc/quant/ for sm_90 (one nvcc file, ~2 min), run its tests
# (tests/quant/test_qgemm_cuda.py, tests/quant/test_qgemm.py), then the benchmark; logs and results to $OUT.
# Usage, from the copy's root:   OUT=/tmp/out dev/device_runs/qgemm_cuda.sh
set -o pipefail
OUT=${OUT:?set OUT to a folder for the logs}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
cmake -S . -B build/x -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGEMMA4_KERNEL_DIRS=${KERNEL_DIRS:-quant;linear} >$OUT/cmake.log 2>&1 || { tail -30 $OUT/cmake.log; exit 1; }
start=$(date +%s)
ninja -C build/x -j16 >$OUT/build.log 2>&1 || { grep -B2 -A12 "error" $OUT/build.log | head -80; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export GEMMA4_LIB_DIR=$PWD/build/x PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
start=$(date +%s)
timeout ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-8} \
  tests/quant/test_qgemm_cuda.py tests/quant/test_qgemm.py >$OUT/tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
start=$(date +%s)
timeout ${BENCH_S:-120} python3 benchmarks/gpu/bench_qgemm_gpu.py >$OUT/bench.log 2>&1; echo "bench rc=$? ($(( $(date +%s) - start )) s)"
grep -E "M=( 1| 16| 32| 64) |M16/M1|M64/M32|target|unavailable|ERROR" $OUT/bench.log | cut -c1-160
cp benchmarks/results/qgemm_gpu-*.json benchmarks/results/qgemm_gpu-*.png $OUT/ 2>/dev/null
true
