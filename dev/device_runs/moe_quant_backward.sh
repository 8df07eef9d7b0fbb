#!/usr/bin/env bash
# One device call for gemma4::moe_experts_quant_backward on CUDA (twelfth session): build this tree for sm_90
# (every kernel folder) and, beside it, the tree before the change for quant, moe and activation (OLD_DIFF, a
# `git diff` of the change, reverse-applied to a copy: there the backward is the composed host loop); time the
# backward under both builds (dev/quant/time_moe_quant_backward.py), then bench_ops.py's backward case (its JSON and plot land in $OUT too), then the
# whole test suite on the new build. Logs and results go to $OUT.
#   git diff HEAD -- csrc >moe_bwd.diff; OUT=/tmp/out OLD_DIFF=moe_bwd.diff bash dev/device_runs/moe_quant_backward.sh
source dev/device_runs/build_new_and_old.sh
export PYTHONPATH=$PWD/python:$PWD
if [ -n "$OLD_DIFF" ]; then
  GEMMA4_LIB_DIR=$PWD/build/old timeout 120 python3 dev/quant/time_moe_quant_backward.py --label before 2>&1 |
    tee $OUT/time.log | tail -4
fi
GEMMA4_LIB_DIR=$PWD/build/x timeout 150 python3 dev/quant/time_moe_quant_backward.py --label after --reference 2>&1 |
  tee -a $OUT/time.log | tail -4
timeout 120 python3 benchmarks/gpu/bench_ops.py --filter moe_experts_quant_backward \
  --name ops_gpu_moe_quant_backward >$OUT/ops.log 2>&1; echo "bench_ops rc=$?"; cut -c1-260 $OUT/ops.log | tail -4
start=$(date +%s)
timeout -s INT -k 20 ${TEST_S:-280} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} tests \
  >$OUT/tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
true
