#!/usr/bin/env bash
# One device call (prepared in the thirty-second session, not yet run): the l2hint variant of the x-resident GEMV
# (dev/cuda/resident_energy_variants.py: 256-byte L2 prefetch hints on its weight and scale loads) timed beside the
# tree by resident_energy.sh, then the x-resident tests on the variant's build, since it computes the right sums and
# would ship as it is. Everything is also written to $OUT/l2hint.log (the reply keeps only the output's tail).
#   bash dev/device_runs/resident_l2hint.sh          (ROUTES, POWER_M, ROUNDS as in resident_energy.sh)
set -o pipefail
{
  ENERGY_VARIANTS=l2hint ROUTES="${ROUTES:-resident auto}" POWER_M=${POWER_M:-1,8,16} ROUNDS=${ROUNDS:-2} \
    bash dev/device_runs/resident_energy.sh
  GEMMA4_LIB_DIR=$PWD/build/l2hint PYTHONPATH=$PWD/python:$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider \
    -n 8 tests/quant/test_qgemm_cuda.py -k "resident or route_rule or deterministic" 2>&1 | tail -4
} 2>&1 | tee $OUT/l2hint.log
