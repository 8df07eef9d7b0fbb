#!/usr/bin/env bash
# One device call for the norm/rope/activation/moe CUDA kernels: build for sm_90, run the quick
# check (dev/cuda/check_ops.py), the op tests on cuda, then the benchmark. Logs go to $OUT.
#   dev/cuda/device_run.sh            (from the copy's root on the GPU machine)
# env: TESTS="tests/ops/..." (default: the op tests of these families), NO_CHECK=1, NO_TESTS=1, NO_BENCH=1,
#      BENCH_ARGS=..., *_S=seconds (time limits)
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
cmake -S . -B build/x -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGEMMA4_KERNEL_DIRS="norm;rope;activation;moe" >$OUT/cmake.log 2>&1 \
  || { tail -30 $OUT/cmake.log; exit 1; }
start=$(date +%s)
ninja -C build/x -j16 >$OUT/build.log 2>&1 || { grep -B2 -A12 "error" $OUT/build.log | head -80; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export GEMMA4_LIB_DIR=$PWD/build/x PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
if [ -z "$NO_CHECK" ]; then
  timeout ${CHECK_S:-150} python3 dev/cuda/check_ops.py >$OUT/check.log 2>&1; echo "check rc=$?"
  grep -v "^ok" $OUT/check.log | tail -40
fi
if [ -z "$NO_TESTS" ]; then
  timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/ops/test_norm.py tests/ops/test_rope.py tests/ops/test_activation.py tests/ops/test_moe.py tests/ops/test_backend_agreement.py} \
    -k "${TEST_K:-cuda or agreement}" >$OUT/tests.log 2>&1; echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | tail -25
fi
[ -n "$NO_BENCH" ] || timeout ${BENCH_S:-150} python3 benchmarks/gpu/bench_ops.py $BENCH_ARGS 2>&1 | tee $OUT/bench.log
cp benchmarks/results/ops_gpu-*.json benchmarks/results/ops_gpu-*.png $OUT/ 2>/dev/null
true
