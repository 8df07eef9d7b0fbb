#!/usr/bin/env bash
# One device call for the x-resident GEMV's batched scale loads (qgemv_resident.cuh, UnitCursor's SB): a quant-only
# sm_90 build (KERNEL_DIRS=all for the whole suite), 31B gate_up / E2B shapes timed with the batched loads and
# without (G4_RES_NOSB=1, the run's temporary switch) on the forced "resident" route and on "auto", rounds
# alternating; then test_qgemm_cuda.py (TESTS=tests: every test).
# Applies dev/cuda/experiments/resident_scale_batch.patch first where the tree does not have it.
set -o pipefail
patch -p1 --forward -s <dev/cuda/experiments/resident_scale_batch.patch >/dev/null 2>&1 || true
KERNEL_DIRS=${KERNEL_DIRS:-quant;linear} source dev/device_runs/build_sm90.sh
export VM=${VM:-1,8,9,16} VMETHODS=ours_int4_g32
for round in $(seq ${ROUNDS:-2}); do
  for v in sb nosb; do
    [ $v = nosb ] && export G4_RES_NOSB=1 || unset G4_RES_NOSB
    for p in resident auto; do
      VPATH=$p timeout 120 python3 dev/cuda/qgemv_variants.py $v-$p $OUT/time-$v-$p-$round.json 2>&1 | grep "M=" | grep -v "31B down"
    done
  done
done
unset G4_RES_NOSB
timeout ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -n 14 --tb=short ${TESTS:-tests/quant/test_qgemm_cuda.py} ${TEST_K:+-k "$TEST_K"} \
  >$OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "^(FAILED|ERROR|E )|passed|failed" $OUT/tests.log | cut -c1-250 | head -30
true
