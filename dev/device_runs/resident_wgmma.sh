#!/usr/bin/env bash
# One device call (thirty-fourth session): the warpgroup x-resident GEMV (csrc/quant/qgemv_resident_wgmma_sm90a.cu,
# taken by the forced "resident" route and by `auto` at 9-16 rows where GEMMA4_RESIDENT_WGMMA=1) against the
# x-resident GEMV of the same build (the variable unset), and the pfnext variants of the latter
# (dev/cuda/resident_energy_variants.py: UNIT_VARIANTS, default "pfnext pfnext2"), built side by side (quant and
# linear, sm_90 with sm_90a code). First the x-resident tests on the warpgroup kernel (TEST_K); then
# dev/cuda/resident_power_probe.py ROUNDS times (default 2) at POWER_M rows (default 1 and 16): the tree and the
# warpgroup kernel on the forced route and `auto`, the variants forced; then dev/cuda/resident_probe.py at PROBE_M rows
# (31B and E2B gate_up, the error against float64) for both kernels. All also in $OUT/wgmma.log.
#   bash dev/device_runs/resident_wgmma.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
VARIANTS=${UNIT_VARIANTS-pfnext pfnext2}
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.limit --format=csv,noheader
  build_resident_variants "$VARIANTS" || exit 1
  GEMMA4_RESIDENT_WGMMA=1 TEST_K="${TEST_K-resident or route_rule or deterministic or graph}" TEST_S=${TEST_S:-150} \
    run_tests x
  cp $OUT/tests.log $OUT/tests-wgmma.log
  # a probe of build/x under GEMMA4_RESIDENT_WGMMA=1 is labelled wg
  probe_power() {  # label route
    local lib=$1 env=
    [ $1 = wg ] && lib=x env="GEMMA4_RESIDENT_WGMMA=1"
    env $env GEMMA4_LIB_DIR=$PWD/build/$lib POWER_M=${POWER_M:-1,16} timeout 100 python3 dev/cuda/resident_power_probe.py \
      $2 $1 2>&1 | grep -E " us |Error"
  }
  for round in $(seq ${ROUNDS:-2}); do
    for b in x wg; do for route in resident auto; do probe_power $b $route; done; done
    for b in $VARIANTS; do probe_power $b resident; done
  done
  for b in x wg; do
    lib=x env=
    [ $b = wg ] && env="GEMMA4_RESIDENT_WGMMA=1"
    for route in resident auto; do
      env $env GEMMA4_LIB_DIR=$PWD/build/$lib PROBE_M=${PROBE_M:-1,2,8,9,16} timeout 90 python3 dev/cuda/resident_probe.py \
        $b $route $OUT/probe-$b-$route.json 2>&1 | grep -E "M=|Error"
    done
  done
} 2>&1 | tee $OUT/wgmma.log
