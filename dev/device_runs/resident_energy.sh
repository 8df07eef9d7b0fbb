#!/usr/bin/env bash
# One device call (thirtieth session): where the x-resident GEMV's time and power go. The tree (build/x) and variants
# of it with one part of the per-unit work taken out (dev/cuda/resident_energy_variants.py: ENERGY_VARIANTS, default
# "nolds nodeq nomma"; empty for the tree alone), built side by side (quant and linear, sm_90), then
# dev/cuda/resident_power_probe.py on each build and route of ROUTES (default the forced "resident"), ROUNDS times
# (default 2), at POWER_M rows (default 1 and 16): the time, and the sustained time, SM clock and board power under a
# 2 s loop. Then benchmarks/gpu/bench_qgemm_gpu.py on build/x at BENCH_M rows if set (BENCH=1: its default rows).
#   bash dev/device_runs/resident_energy.sh
#   ENERGY_VARIANTS= ROUTES="resident auto" POWER_M=1,2,8,16 ROUNDS=1 BENCH_M=1,8,16,128 \
#     bash dev/device_runs/resident_energy.sh      (the tree alone on two routes, then the benchmark)
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
VARIANTS=${ENERGY_VARIANTS-nolds nodeq nomma}
build_resident_variants "$VARIANTS" || exit 1
for round in $(seq ${ROUNDS:-2}); do
  for b in x $VARIANTS; do
    for route in ${ROUTES:-resident}; do
      GEMMA4_LIB_DIR=$PWD/build/$b POWER_M=${POWER_M:-1,16} timeout 200 python3 dev/cuda/resident_power_probe.py \
        $route $b 2>&1 | grep -E " us |Error"
    done
  done
done
rm -f $OUT/cmake-*.log
[ -z "${BENCH_M:-}${BENCH:-}" ] || run_bench 220  # BENCH=1: the benchmark's own row list
true
