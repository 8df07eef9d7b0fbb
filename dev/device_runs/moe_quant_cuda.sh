#!/usr/bin/env bash
# One device call for gemma4::moe_experts_quant on CUDA: build csrc/quant, moe and activation for sm_90, run
# tests/quant/test_moe_experts_quant.py (its CUDA cases: CUDA vs CPU vs the float64 reference) and the
# registration tests (and tests/ops/test_moe.py: the bf16 experts share the grouping), then time a 26B-A4B-shaped
# expert bank's decode step against the old Python loop, and benchmarks/gpu/bench_ops.py's MoE cases.
#   OUT=/tmp/out bash dev/device_runs/moe_quant_cuda.sh
set -o pipefail
OUT=${OUT:?set OUT to a folder for the logs}
KERNEL_DIRS="quant;moe;activation" source dev/device_runs/build_sm90.sh
start=$(date +%s)
timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 tests/quant/test_moe_experts_quant.py \
  tests/ops/test_moe.py tests/ops/test_missing_cuda_kernels.py tests/ops/test_fake_kernels.py >$OUT/tests.log 2>&1
echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed|Error" $OUT/tests.log | cut -c1-300 | tail -30
timeout ${BENCH_S:-120} python3 dev/quant/time_moe_experts_quant.py --device cuda --tokens 1,16,128 --reps 50 \
  2>&1 | tee $OUT/time.log | tail -6
timeout ${OPS_S:-150} python3 benchmarks/gpu/bench_ops.py --filter moe_experts --name ops_gpu_moe >$OUT/ops.log 2>&1
echo "bench_ops rc=$?"; cut -c1-230 $OUT/ops.log | tail -12
true
