#!/usr/bin/env bash
# One device call (thirty-fourth session): the warpgroup x-resident GEMV (dev/cuda/experiments/resident_wgmma.patch,
# applied here where the tree lacks it: csrc/quant/qgemv_resident_wgmma_sm90a.cu, the forced "resident_wgmma" route)
# against the x-resident GEMV (the forced "resident" route and `auto`) of the same build, and the pfnext variants of
# the latter (dev/cuda/resident_energy_variants.py: UNIT_VARIANTS, default "pfnext pfnext2"), built side by side
# (quant and linear, sm_90 with sm_90a code). First the x-resident tests (TEST_K, both kernels); then
# dev/cuda/resident_power_probe.py ROUNDS times (default 2) at POWER_M rows (default 1 and 16); then
# dev/cuda/resident_probe.py at PROBE_M rows (31B and E2B gate_up, and the error against float64), the A/B written by
# dev/cuda/resident_ab_results.py. All also in $OUT/wgmma.log. Log: dev/device_runs/2026-12-07n-h100-resident-wgmma.log.
#   bash dev/device_runs/resident_wgmma.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
VARIANTS=${UNIT_VARIANTS-pfnext pfnext2}
probe_power() {  # build route
  GEMMA4_LIB_DIR=$PWD/build/$1 POWER_M=${POWER_M:-1,16} timeout 100 python3 dev/cuda/resident_power_probe.py $2 $1 2>&1 |
    grep -E " us |Error"
}
{
  gpu_state
  apply_patch_once dev/cuda/experiments/resident_wgmma.patch
  build_resident_variants "$VARIANTS" || exit 1
  TEST_K="${TEST_K-resident or route_rule or deterministic or graph}" TEST_S=${TEST_S:-150} run_tests x
  for round in $(seq ${ROUNDS:-2}); do
    for route in resident_wgmma resident auto; do probe_power x $route; done
    for b in $VARIANTS; do probe_power $b resident; done
  done
  for route in resident_wgmma resident auto; do
    GEMMA4_LIB_DIR=$PWD/build/x PROBE_M=${PROBE_M:-1,2,8,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
      x $route $BUILD_LOGS/probe-x-$route.json 2>&1 | grep -E "M=|Error"
  done
  python3 -c "import json; from benchmarks.gpu.common import gpu_info; print(json.dumps(gpu_info()))" >$OUT/machine.json
  python3 dev/cuda/resident_ab_results.py $BUILD_LOGS/probe-x-resident.json $BUILD_LOGS/probe-x-resident_wgmma.json - \
    qgemm_gpu_resident_wgmma_ab && cp benchmarks/results/qgemm_gpu_resident_wgmma_ab-* $OUT/
} 2>&1 | tee $OUT/wgmma.log
