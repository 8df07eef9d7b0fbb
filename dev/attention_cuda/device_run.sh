#!/usr/bin/env bash
# One device call: build the attention kernels for sm_90, run check.py (correctness), then the benchmark.
# Run from the copy's root on the GPU machine; logs go to $OUT. Usage: dev/attention_cuda/device_run.sh [bench args]
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
cmake -S . -B build/x -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGEMMA4_KERNEL_DIRS=attention >$OUT/cmake.log 2>&1 || { tail -30 $OUT/cmake.log; exit 1; }
start=$(date +%s)
ninja -C build/x -j16 >$OUT/build.log 2>&1 || { grep -A12 "error" $OUT/build.log | head -60; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export GEMMA4_LIB_DIR=$PWD/build/x PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
timeout ${CHECK_S:-120} python3 dev/attention_cuda/check.py >$OUT/check.log 2>&1; echo "check rc=$?"
grep -v "^ok" $OUT/check.log | head -40
[ -n "$NO_BENCH" ] || timeout ${BENCH_S:-100} python3 benchmarks/gpu/bench_attention.py "$@" 2>&1 | tee $OUT/bench.log
