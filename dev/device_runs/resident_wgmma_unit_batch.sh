#!/usr/bin/env bash
# Ready for a device call (not run: the thirty-fourth session's device time was spent): the warpgroup x-resident GEMV
# (dev/cuda/experiments/resident_wgmma.patch, applied to the tree here: build/x) against its unit-batched version
# (resident_wgmma_unit_batch.patch on top: build/ub; three warpgroups a block at up to 168 registers, a unit's 16 A
# fragments dequantized before one wait for its 16 MMAs, instead of four warpgroups waiting once a span) and `auto`,
# built side by side: the warpgroup kernel's tests on build/ub, then dev/cuda/resident_probe.py at PROBE_M rows on
# the forced "resident_wgmma" route of both builds and on `auto` (31B and E2B gate_up, the error against float64).
#   bash dev/device_runs/resident_wgmma_unit_batch.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
{
  gpu_state
  apply_patch_once dev/cuda/experiments/resident_wgmma.patch
  start=$(date +%s)
  copy_tree /tmp/ub && (cd /tmp/ub && patch -p1 -s <$OLDPWD/dev/cuda/experiments/resident_wgmma_unit_batch.patch) || exit 1
  (cfg /tmp/ub $PWD/build/ub && ninja -C build/ub -j8 >$BUILD_LOGS/build-ub.log 2>&1; echo "ub rc=$?") &
  (cfg . build/x && ninja -C build/x -j8 >$BUILD_LOGS/build-x.log 2>&1; echo "x rc=$?") &
  wait
  builds_done $start
  TEST_K="${TEST_K-resident_wgmma}" TEST_S=${TEST_S:-120} run_tests ub
  for b in x ub; do
    GEMMA4_LIB_DIR=$PWD/build/$b PROBE_M=${PROBE_M:-1,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
      $b resident_wgmma $BUILD_LOGS/probe-$b.json 2>&1 | grep -E "M=|Error"
  done
  GEMMA4_LIB_DIR=$PWD/build/x PROBE_M=${PROBE_M:-1,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
    x auto $BUILD_LOGS/probe-auto.json 2>&1 | grep -E "M=|Error"
} 2>&1 | tee $OUT/unit_batch.log
