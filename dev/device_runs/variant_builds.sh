# Sourced by the device scripts that build the quant kernels more than once and compare them (ab_patch.sh,
# wgmma_gemm.sh, resident_select.sh, the resident_* scripts): the Python path, the card's state line, configure a
# build, build the tree and its state before a patch side by side, report the parallel builds, run the tests on
# build/x. The tests' log goes to $OUT, the build logs to $BUILD_LOGS
# (default /tmp/build_logs): the device returns only a few files of $OUT, the first by name, so $OUT keeps what
# matters.
PY=$(which python3)
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1  # the tree's python package and benchmarks, unbuffered logs
gpu_state() {  # the card, its clocks, temperature and power cap, one CSV line
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.limit --format=csv,noheader
}
BUILD_LOGS=${BUILD_LOGS:-/tmp/build_logs}
mkdir -p $BUILD_LOGS
# A patch file (git diff) applied to the tree unless the tree has it already (its reverse applies).
apply_patch_once() {
  if patch -p1 -s -N --dry-run <$1 >/dev/null 2>&1; then patch -p1 -s <$1 && echo "PATCH $1 applied to the tree"; fi
}
cfg() {  # source dir, build dir, extra CUDA flags
  cmake -S $1 -B $2 -G Ninja -DPython_EXECUTABLE=$PY -DGEMMA4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGEMMA4_KERNEL_DIRS=${XDIRS:-quant;linear} -DCMAKE_CUDA_FLAGS="$3" >$BUILD_LOGS/cmake-$(basename $2).log 2>&1
}
builds_done() {  # the builds' start time (date +%s): elapsed time and the first errors
  echo "builds: $(( $(date +%s) - $1 )) s"
  grep -h -B2 -A12 " error" $BUILD_LOGS/build-*.log | head -40
  true  # no error found is not a failure (with pipefail, grep's status was the function's)
}
run_tests() {  # TESTS (default tests/quant/test_qgemm_cuda.py, "none" to skip), TEST_K, TEST_S on build/$1 (x)
  [ "${TESTS:-}" != none ] || return 0
  local start=$(date +%s)
  GEMMA4_LIB_DIR=$PWD/build/${1:-x} timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 \
    ${TESTS:-tests/quant/test_qgemm_cuda.py} ${TEST_K:+-k "$TEST_K"} >$OUT/tests.log 2>&1
  echo "tests rc=$? ($(( $(date +%s) - start )) s)"
  grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
}
run_bench() {  # benchmarks/gpu/bench_qgemm_gpu.py on build/x (BENCH_M rows, or its own list): summary, results to $OUT
  GEMMA4_LIB_DIR=$PWD/build/x timeout ${1:-200} python3 benchmarks/gpu/bench_qgemm_gpu.py ${BENCH_M:+--m $BENCH_M} \
    >$OUT/bench.log 2>&1
  echo "bench rc=$?"
  local results=$(ls -t benchmarks/results/qgemm_gpu-nvidia-*.json | head -1)  # the one just written
  grep -A30 '"summary"' $results | head -30
  cp $results ${results%.json}.png $OUT/
}
copy_tree() {  # a fresh copy in $1 of what a build needs (and of $2.., e.g. "benchmarks dev")
  local dir=$1
  shift
  rm -rf $dir && mkdir $dir && cp -r csrc python CMakeLists.txt pyproject.toml "$@" $dir/
}
# A copy of the tree in $1 with the patches $2.. (git diffs, tests included) taken back out in that order: the tree
# before them.
reversed_copy() {
  local dir=$1 p
  shift
  copy_tree $dir benchmarks dev tests
  for p in "$@"; do
    patch -R -p1 -s -d $dir <"$(realpath $p)" || { echo "patch -R $p failed"; return 1; }
  done
}
# Configures source dir $2 into build/$1 and builds it with $3 jobs, in the background (the caller waits).
build_bg() {
  (cfg $2 $PWD/build/$1 && ninja -C build/$1 -j$3 >$BUILD_LOGS/build-$1.log 2>&1; echo "$1 rc=$?") &
}
# Each variant of $1 (names of dev/cuda/resident_energy_variants.py) written into a copy of the tree and built into
# build/<name> with $2 jobs, in the background (the caller waits).
start_variant_builds() {
  local v
  for v in $1; do
    copy_tree /tmp/$v
    python3 dev/cuda/resident_energy_variants.py /tmp/$v $v || return 1
    build_bg $v /tmp/$v $2
  done
}
# The tree into build/x and each variant of $1 into build/<name>, side by side on the 16 cores.
build_resident_variants() {
  local start=$(date +%s) jobs=$(( 16 / ($(echo $1 | wc -w) + 1) ))
  start_variant_builds "$1" $jobs || return 1
  build_bg x . $jobs
  wait
  builds_done $start
}
# A patch of the tree (git diff): the tree into build/x, a copy with the patch reversed into build/base.
build_with_base() {
  local start=$(date +%s)
  reversed_copy /tmp/base "$1" || return 1
  build_bg x . 10
  build_bg base /tmp/base 6
  wait
  builds_done $start
}
