#!/usr/bin/env bash
# One device call (fourteenth session): gemma4::moe_experts_quant's many-token forward and its backward on the
# packed banks' grouped GEMMs (moe_tc_packed_b.cuh). Builds this tree for sm_90 with dev/quant/moe_gemv_threshold.patch
# applied (unset, its knob keeps the shipped threshold, so the suite tests the shipped routes), then times the
# op against moe_experts on bf16 banks (int4 g32, int8 per channel), both routes at 16-192 tokens (the knob at 0
# and 10^5), and runs the whole suite for TEST_S seconds. Logs to $OUT.
#   OUT=/tmp/out bash dev/device_runs/moe_packed_tc.sh
set -o pipefail
OUT=${OUT:?set OUT to a folder for the logs}
patch -s -p1 <dev/quant/moe_gemv_threshold.patch || exit 1
source dev/device_runs/build_sm90.sh
timeout 120 python3 dev/quant/time_moe_packed_tc.py --dense --tokens ${TOKENS:-160,256,512,1024,2048} 2>&1 | tee $OUT/time.log
timeout 60 python3 dev/quant/time_moe_packed_tc.py --bits 8 --group 0 --tokens 160,512,2048 2>&1 | tee -a $OUT/time.log
for t in 0 100000; do
  GEMMA4_MOE_GEMV_MAX_TOKENS=$t timeout 60 python3 dev/quant/time_moe_packed_tc.py --tokens 16,32,40,48,64,96,128,192 \
    --reps 30 2>&1 | sed "s/^/max_tokens=$t /"
done | tee $OUT/threshold.log
start=$(date +%s)
timeout -s INT -k 20 ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} ${TESTS:-tests} \
  >$OUT/tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
true
