#!/usr/bin/env bash
# One device call (prepared in the thirty-second session; the variant ran in the thirty-third on two-span units,
# through resident_units.sh, and lost 1-3 µs): the l2hint variant of the x-resident GEMV
# (dev/cuda/resident_energy_variants.py: 256-byte L2 prefetch hints on its weight and scale loads) timed beside the
# tree by resident_energy.sh, then the x-resident tests on the variant's build, since it computes the right sums and
# would ship as it is. Everything is also written to $OUT/l2hint.log (the reply keeps only the output's tail).
#   bash dev/device_runs/resident_l2hint.sh          (ROUTES, POWER_M, ROUNDS as in resident_energy.sh)
set -o pipefail
source dev/device_runs/variant_builds.sh
{
  ENERGY_VARIANTS=l2hint ROUTES="${ROUTES:-resident auto}" POWER_M=${POWER_M:-1,8,16} ROUNDS=${ROUNDS:-2} \
    bash dev/device_runs/resident_energy.sh
  TEST_K="resident or route_rule or deterministic" TEST_S=150 run_tests l2hint
} 2>&1 | tee $OUT/l2hint.log
