#!/usr/bin/env bash
# One device call for the x-resident int4 GEMV (qgemv_resident.cuh): a quant-only sm_90 build, the GEMV shapes timed
# on each route of VARIANTS (dev/cuda/qgemv_variants.py; route:D sets G4_RES_D for a build that reads it), then
# test_qgemm_cuda.py (every route, the forced "resident" one included; TESTS=none skips them) under 14 workers, then
# EXTRA if set.
#   bash dev/device_runs/resident_gemv.sh     (VM: the M values, default 1,2,4,8,9,12,16; VSHAPES: more shapes)
set -o pipefail
KERNEL_DIRS=${KERNEL_DIRS:-quant;linear} source dev/device_runs/build_sm90.sh
rm -f $OUT/cmake.log $OUT/build.log
export VM=${VM:-1,2,4,8,9,12,16} VMETHODS=${VMETHODS:-ours_int4_g32}
for v in ${VARIANTS:-resident auto resident auto}; do  # route[:G4_RES_D]
  p=${v%%:*}; pf=${v#*:}; [ "$pf" = "$v" ] && pf=3
  G4_RES_D=$pf VPATH=$p timeout 120 python3 dev/cuda/qgemv_variants.py $p-pf$pf $OUT/time-$p-pf$pf.json 2>&1 | grep -v "^$" | grep -v "31B down" | tail -30
done
if [ "${TESTS:-}" != none ]; then
  timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n 14 --tb=short ${TESTS:-tests/quant/test_qgemm_cuda.py} \
    ${TEST_K:+-k "$TEST_K"} >$OUT/tests.log 2>&1; echo "tests rc=$?"
  grep -E "^(FAILED|ERROR|E )|passed|failed" $OUT/tests.log | cut -c1-250 | head -30
fi
[ -z "$EXTRA" ] || eval "$EXTRA"
true
