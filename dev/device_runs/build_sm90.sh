# Sourced by the device-run scripts: print the GPU, configure and build every kernel folder (or KERNEL_DIRS)
# for sm_90 into build/x, and export what the tests and benchmarks need to load that build. Logs to $OUT.
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
cmake -S . -B build/x -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGEMMA4_KERNEL_DIRS=${KERNEL_DIRS:-all} >$OUT/cmake.log 2>&1 ||
  { tail -30 $OUT/cmake.log; exit 1; }
build_start=$(date +%s)
ninja -C build/x -j16 >$OUT/build.log 2>&1 || { grep -B2 -A12 "error" $OUT/build.log | head -80; exit 1; }
echo "build: $(( $(date +%s) - build_start )) s"
export GEMMA4_LIB_DIR=$PWD/build/x PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
