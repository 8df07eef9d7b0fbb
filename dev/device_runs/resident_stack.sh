#!/usr/bin/env bash
# One device call (thirty-ninth session): the two x-resident GEMV patches stacked, each step timed against the one
# before it in the same call. build/base: the tree; build/sub: + dev/cuda/experiments/resident_subnormal_levels.patch
# (bf16 levels as subnormals, one HFMA2 a weight pair); build/x: + resident_tile_pairs.patch on top (units of one
# span of two tiles: each x fragment read from shared memory serves both). The patches are applied to this machine's
# copy of the tree (so build/x and the tests have both) and taken back out of copies for base and sub.
# Then, in the order of what shipping needs (~9 minutes in all at the defaults): the x-resident tests on build/x, and
# on build/sub as well when build/x fails them; dev/cuda/resident_power_probe.py, ROUNDS times (default 1), on the
# forced x-resident route for base, sub and x and on `auto` for x (POWER_M rows, default 1,16); BENCH=1 the issue's
# benchmark on build/x; AB=1 dev/cuda/resident_probe.py on base and x, forced route (PROBE_M rows), the A/B written
# to benchmarks/results.
#   BENCH=1 bash dev/device_runs/resident_stack.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
SUB=dev/cuda/experiments/resident_subnormal_levels.patch
PAIRS=dev/cuda/experiments/resident_tile_pairs.patch
{
  gpu_state
  apply_patch_once $SUB
  apply_patch_once $PAIRS
  start=$(date +%s)
  reversed_copy /tmp/sub $PAIRS && reversed_copy /tmp/base $PAIRS $SUB || exit 1
  build_bg x . 6
  build_bg sub /tmp/sub 6
  build_bg base /tmp/base 6
  wait
  builds_done $start
  # the tests first (what shipping needs), then the times
  TEST_K="${TEST_K-resident or route_rule or deterministic}" TEST_S=${TEST_S:-150}
  run_tests x
  if grep -qE "^(FAILED|ERROR)" $OUT/tests.log; then
    mv $OUT/tests.log $OUT/tests-x.log
    run_tests sub
  fi
  for round in $(seq ${ROUNDS:-1}); do
    for run in "base resident" "sub resident" "x resident" "x auto"; do
      set -- $run
      GEMMA4_LIB_DIR=$PWD/build/$1 POWER_M=${POWER_M:-1,16} timeout 100 python3 dev/cuda/resident_power_probe.py \
        $2 $1 2>&1 | grep -E " us |Error"
    done
  done
  [ -z "${BENCH:-}" ] || run_bench
  if [ -n "${AB:-}" ]; then  # AB=1: dev/cuda/resident_probe.py on base and x, the A/B into benchmarks/results
    for b in base x; do
      GEMMA4_LIB_DIR=$PWD/build/$b PROBE_M=${PROBE_M:-1,2,8,16} timeout 90 python3 dev/cuda/resident_probe.py \
        $b resident $BUILD_LOGS/probe-$b-resident.json 2>&1 | grep -E "M=|Error"
    done
    python3 dev/cuda/resident_ab_results.py $BUILD_LOGS/probe-base-resident.json $BUILD_LOGS/probe-x-resident.json &&
      cp benchmarks/results/qgemm_gpu_resident_ab-* $OUT/
  fi
} 2>&1 | tee $OUT/stack.log
