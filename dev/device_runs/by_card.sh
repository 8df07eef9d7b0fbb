#!/usr/bin/env bash
# One device call for the H200 that issue 10's figures name (a request for one may get an H100): on an H200 the
# issue's figures (benchmarks/gpu/bench_qgemm_gpu.py on the tree, BENCH=1 of resident_units.sh; its results to
# commit as benchmarks/results/qgemm_gpu-nvidia-h200.*), one power round of the tree on the forced x-resident
# route and `auto`, and the routes probed at 1-16 rows (if the x-resident GEMV wins 2-8 rows there too, as on
# the H100, `resident_gemv_wins` in csrc/quant/qgemm_cuda.cu takes M >= 2). No variants (UNIT_VARIANTS to add
# some), no tests. On an H100 nothing: everything left to time there was timed in the thirty-seventh session
# (dev/device_runs/2026-12-07q-h100-scaleafter.log).
#   bash dev/device_runs/by_card.sh            (BENCH_ONLY=1: the build and the benchmark alone)
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
if [ -n "${BENCH_ONLY:-}" ]; then  # a short call: the tree's quant build and the benchmark alone (~3 min)
  case "$name" in *H200*) ;; *) echo "not an H200: nothing to run"; exit 0 ;; esac
  source dev/device_runs/variant_builds.sh
  cfg . build/x && ninja -C build/x -j16 >$BUILD_LOGS/build-x.log 2>&1 || { tail -20 $BUILD_LOGS/build-x.log; exit 1; }
  GEMMA4_LIB_DIR=$PWD/build/x timeout 200 python3 benchmarks/gpu/bench_qgemm_gpu.py >$OUT/bench.log 2>&1
  tail -5 $OUT/bench.log
  cp benchmarks/results/qgemm_gpu-nvidia-h200.* $OUT/
  exit 0
fi
case "$name" in
  *H200*) NO_BASE=1 ROUNDS=${ROUNDS:-1} TESTS=${TESTS:-none} BENCH=1 UNIT_VARIANTS=${UNIT_VARIANTS-} \
    bash dev/device_runs/resident_units.sh ;;
  *) echo "not an H200: nothing to run" ;;
esac
