#!/usr/bin/env bash
# One short device call (thirty-fourth session, after resident_wgmma.sh): the warpgroup x-resident GEMV
# (dev/cuda/experiments/resident_wgmma.patch, applied here where the tree lacks it) with its x copy batched
# (kFillBatch loads in flight a thread) against `auto` (the x-resident GEMV at 9-16 rows) in the same build: the
# x-resident tests (TESTS=none skips them), one power-probe round at 1 and 16 rows (POWER=0 skips it), and
# resident_probe.py at PROBE_M rows; the probe files and the machine's description in $OUT (few files, so that they
# come back). Log: dev/device_runs/2026-12-07o-h100-resident-wgmma-fill.log.
#   bash dev/device_runs/resident_wgmma_fill.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
{
  gpu_state
  apply_patch_once dev/cuda/experiments/resident_wgmma.patch
  start=$(date +%s)
  cfg . build/x && ninja -C build/x -j16 >$BUILD_LOGS/build-x.log 2>&1 || { tail -30 $BUILD_LOGS/build-x.log; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
  TEST_K="${TEST_K-resident or graph}" TEST_S=${TEST_S:-120} run_tests x
  [ "${POWER:-1}" = 0 ] || for route in resident_wgmma auto; do
    GEMMA4_LIB_DIR=$PWD/build/x POWER_M=1,16 timeout 100 python3 dev/cuda/resident_power_probe.py $route x 2>&1 |
      grep -E " us |Error"
  done
  for route in resident_wgmma auto; do
    GEMMA4_LIB_DIR=$PWD/build/x PROBE_M=${PROBE_M:-1,2,8,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
      x $route $OUT/probe-x-$route.json 2>&1 | grep -E "M=|Error"
  done
  python3 -c "import json; from benchmarks.gpu.common import gpu_info; print(json.dumps(gpu_info()))" >$OUT/machine.json
} 2>&1 | tee $OUT/fill.log
