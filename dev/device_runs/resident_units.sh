#!/usr/bin/env bash
# One device call (thirty-third session): the x-resident GEMV with two-span units (PATCH, default
# dev/cuda/experiments/resident_two_span_units.patch, = git diff d3a3d34 6521003 -- csrc; applied here first if the
# tree does not have it yet) against the tree before it (build/base), and variants of the new tree
# (dev/cuda/resident_energy_variants.py: UNIT_VARIANTS, default "startpf noweight"; pfnext and pfnext2 lost on the
# H100), built side by side (quant and linear, sm_90; NO_BASE=1 leaves base out). Then
# dev/cuda/resident_power_probe.py, ROUNDS times (default 2): base and x on the forced x-resident route and `auto`,
# the variants on the forced route, at POWER_M rows (default 1 and 16); dev/cuda/resident_probe.py on base and x,
# forced route and `auto`, at PROBE_M rows (31B and E2B gate_up: where the routes cross, and the error against
# float64), the forced route's A/B written to benchmarks/results by dev/cuda/resident_ab_results.py; then the
# x-resident tests on build/x. All also in $OUT/units.log, with the A/B's results files. On an H200 this is the call
# that decides whether `auto` should take 2-8 rows here too. BENCH=1 runs benchmarks/gpu/bench_qgemm_gpu.py on
# build/x after the builds (BENCH_M rows) and copies its results to $OUT.
#   bash dev/device_runs/resident_units.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
VARIANTS=${UNIT_VARIANTS-startpf noweight}
BASE=base
[ -z "${NO_BASE:-}" ] || BASE=  # NO_BASE=1: no build/base, the variants against the tree only
PATCH=${PATCH:-dev/cuda/experiments/resident_two_span_units.patch}
{
  gpu_state
  # A tree without the change gets it here (this machine's copy only), so that build/x has it either way.
  apply_patch_once $PATCH
  if [ -n "$BASE" ]; then
    start_variant_builds "$VARIANTS" 3 || exit 1
    build_with_base $PATCH || exit 1
    wait
  else
    build_resident_variants "$VARIANTS" || exit 1
  fi
  [ -z "${BENCH:-}" ] || run_bench  # BENCH=1: the figures, benchmarks/gpu/bench_qgemm_gpu.py on build/x, first
  for round in $(seq ${ROUNDS:-2}); do
    for b in $BASE x $VARIANTS; do
      routes="resident auto"
      case " $VARIANTS " in *" $b "*) routes=resident ;; esac
      for route in $routes; do
        GEMMA4_LIB_DIR=$PWD/build/$b POWER_M=${POWER_M:-1,16} timeout 100 python3 dev/cuda/resident_power_probe.py \
          $route $b 2>&1 | grep -E " us |Error"
      done
    done
  done
  for b in $BASE x; do
    for route in resident auto; do
      GEMMA4_LIB_DIR=$PWD/build/$b PROBE_M=${PROBE_M:-1,2,4,8,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
        $b $route $BUILD_LOGS/probe-$b-$route.json 2>&1 | grep -E "M=|Error"
    done
  done
  if [ -n "$BASE" ]; then  # (as `[ -z ] || a && b` it copied the committed A/B files without a base)
    python3 dev/cuda/resident_ab_results.py $BUILD_LOGS/probe-base-resident.json \
      $BUILD_LOGS/probe-x-resident.json && cp benchmarks/results/qgemm_gpu_resident_ab-* $OUT/
  fi
  TEST_K="${TEST_K-resident or route_rule or deterministic}" TEST_S=${TEST_S:-150} run_tests x
} 2>&1 | tee $OUT/units.log
