#!/usr/bin/env bash
# One device call for the quantization issue's GPU figures: build every kernel folder for sm_90, run the
# quantization tests and the op-registration tests, then benchmarks/gpu/bench_model.py on E2B with --quantize
# int4,int8 and benchmarks/gpu/bench_qgemm_gpu.py (M values QM). Logs and results to $OUT.
#   QM=1,16,32,33,64,128,256,1024 bash dev/device_runs/quant_gpu.sh
set -o pipefail
source dev/device_runs/build_sm90.sh
start=$(date +%s)
timeout ${TEST_S:-120} python3 -m pytest -q -p no:cacheprovider -n 12 tests/quant tests/ops/test_fake_kernels.py \
  tests/ops/test_missing_cuda_kernels.py tests/ops/test_cuda_kernels.py >$OUT/tests.log 2>&1
echo "tests rc=$? ($(( $(date +%s) - start )) s)"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -20
start=$(date +%s)
timeout ${MODEL_S:-150} python3 benchmarks/gpu/bench_model.py --models gemma-4-E2B --quantize int4,int8 >$OUT/model.log 2>&1
echo "bench_model rc=$? ($(( $(date +%s) - start )) s)"
tail -4 $OUT/model.log | cut -c1-300
start=$(date +%s)
timeout ${BENCH_S:-150} python3 benchmarks/gpu/bench_qgemm_gpu.py --m ${QM:-1,16,32,33,64,128,256,1024} >$OUT/bench.log 2>&1
echo "bench_qgemm rc=$? ($(( $(date +%s) - start )) s)"
grep -E "ours|cublas|target" $OUT/bench.log | cut -c1-120
cp benchmarks/results/qgemm_gpu-*.json benchmarks/results/qgemm_gpu-*.png benchmarks/results/model_gpu_quantized-* $OUT/ 2>/dev/null
true
