#!/usr/bin/env bash
# One device call for the routing weights' fp32 gradients in gemma4::moe_experts_quant_backward (thirteenth
# session): build this tree for sm_90 and, beside it, the tree before the change (OLD_DIFF, as in
# moe_quant_backward.sh); time the backward under both; run tests/quant/test_moe_experts_quant.py's CUDA cases
# under SEEDS (the decode case failed on one seed before); then the whole suite for TEST_S seconds. Logs to $OUT.
# TOKENS: the token counts to time; KERNEL_DIRS (build_sm90.sh) with TEST_S=0 for a quicker call.
#   git diff HEAD -- csrc >gw.diff; OUT=/tmp/out OLD_DIFF=gw.diff SEEDS="1 2 398868013" bash dev/device_runs/grad_weights_fp32.sh
source dev/device_runs/build_new_and_old.sh
if [ -n "$OLD_DIFF" ]; then
  GEMMA4_LIB_DIR=$PWD/build/old timeout 120 python3 dev/quant/time_moe_quant_backward.py --tokens ${TOKENS:-8,64,512} --label before 2>&1 |
    tee $OUT/time.log | tail -3
fi
timeout 120 python3 dev/quant/time_moe_quant_backward.py --tokens ${TOKENS:-8,64,512} --label after 2>&1 | tee -a $OUT/time.log | tail -3
for seed in $SEEDS; do
  GEMMA4_TEST_SEED=$seed timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda \
    tests/quant/test_moe_experts_quant.py 2>&1 | tail -1 | sed "s/^/seed $seed: /" | tee -a $OUT/seeds.log
done
[ "${TEST_S:-240}" != 0 ] || exit 0  # TEST_S=0: no whole suite (a build of some kernel folders only)
start=$(date +%s)
timeout -s INT -k 20 ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} tests \
  >$OUT/tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
true
