#!/usr/bin/env bash
# One device call: where the x-resident int4 GEMV (qgemv_resident.cuh) beats the routes `auto` takes at 1-8 rows
# (the int16 GEMV, the copy-engine GEMVs), on this GPU: a quant-only sm_90 build, then the benchmark's shapes
# timed with the route forced to "resident" and on "auto", ROUNDS rounds alternating. Logs and JSON to $OUT.
set -o pipefail
KERNEL_DIRS=quant source dev/device_runs/build_sm90.sh
export VM=${VM:-1,2,3,4,6,8,9,16} VMETHODS=ours_int4_g32
for round in $(seq ${ROUNDS:-2}); do
  for p in resident auto; do
    VPATH=$p timeout 120 python3 dev/cuda/qgemv_variants.py $p $OUT/time-$p-$round.json 2>&1 | grep "M="
  done
done
true
