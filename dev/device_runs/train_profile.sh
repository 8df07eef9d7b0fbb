#!/usr/bin/env bash
# One device call: build for sm_90, then profile one GPU LoRA training step per implementation
# (dev/train/profile_gpu_step.py). Env: IMPLS (default "ours transformers"), AFTER (extra commands).
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
cmake -S . -B build/x -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 >$OUT/cmake.log 2>&1 || { tail -30 $OUT/cmake.log; exit 1; }
start=$(date +%s)
ninja -C build/x -j16 >$OUT/build.log 2>&1 || { grep -B2 -A12 "error" $OUT/build.log | head -60; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export GEMMA4_LIB_DIR=$PWD/build/x PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
for impl in ${IMPLS:-ours transformers}; do
  timeout ${PROF_S:-200} python3 dev/train/profile_gpu_step.py --impl $impl --out $OUT/$impl ${PROF_ARGS} \
    > $OUT/$impl.log 2>&1; echo "$impl rc=$?"; tail -3 $OUT/$impl.log | cut -c1-300
done
[ -z "$AFTER" ] || eval "$AFTER"
true
