#!/usr/bin/env bash
# One device call (thirteenth session): build this tree for sm_90 (every kernel folder) and, beside it, a copy with
# dev/quant/moe_gemv_threshold.patch (moe_experts_quant's GEMV / dequantized-banks threshold from
# GEMMA4_MOE_GEMV_MAX_TOKENS; quant, moe and activation only). Then: the backward's time at 1, 2 and 8 tokens
# (the fp32 routing-weight gradients up to 16 pairs); the forward under each route at every token count in
# TOKENS (the patched build, the threshold 0 and 10^5); tests/quant/test_moe_experts_quant.py's CUDA cases under
# SEEDS; the whole suite for TEST_S seconds. Logs to $OUT.
#   OUT=/tmp/out SEEDS="1 2" bash dev/device_runs/gemv_threshold_and_suite.sh
set -o pipefail
OUT=${OUT:?set OUT to a folder for the logs}
source dev/device_runs/build_patched_copy.sh tune dev/quant/moe_gemv_threshold.patch
source dev/device_runs/build_sm90.sh
wait
timeout 100 python3 dev/quant/time_moe_quant_backward.py --tokens 1,2,8 --label now 2>&1 | tee $OUT/time.log | tail -3
for t in 0 100000; do
  GEMMA4_LIB_DIR=$PWD/build/tune GEMMA4_MOE_GEMV_MAX_TOKENS=$t timeout 150 python3 dev/quant/time_moe_experts_quant.py \
    --device cuda --tokens ${TOKENS:-16,32,48,64,96,128,192} --reps 20 2>&1 | sed "s/^/max_tokens=$t /" |
    tee -a $OUT/threshold.log | cut -c1-120
done
for seed in $SEEDS; do
  GEMMA4_TEST_SEED=$seed timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda \
    tests/quant/test_moe_experts_quant.py 2>&1 | tail -1 | sed "s/^/seed $seed: /" | tee -a $OUT/seeds.log
done
start=$(date +%s)
timeout -s INT -k 20 ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} tests \
  >$OUT/tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
true
