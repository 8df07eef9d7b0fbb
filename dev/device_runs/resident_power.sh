#!/usr/bin/env bash
# One device call (thirtieth session): build quant and linear for sm_90 (the tree as it is), then
# dev/cuda/resident_power_probe.py on the forced x-resident route and on "auto" (is the GEMV's time data-dependent,
# i.e. the clock under the power cap?), then benchmarks/gpu/bench_qgemm_gpu.py at BENCH_M rows if set.
#   BENCH_M=1,8,16,128 bash dev/device_runs/resident_power.sh
set -o pipefail
KERNEL_DIRS="quant;linear" source dev/device_runs/build_sm90.sh
nvidia-smi --query-gpu=power.limit,power.max_limit,clocks.max.sm,clocks_throttle_reasons.active --format=csv
for route in ${ROUTES:-resident auto}; do
  timeout 200 python3 dev/cuda/resident_power_probe.py $route 2>&1 | grep -E "us|Error"
done
nvidia-smi --query-gpu=clocks_throttle_reasons.active,clocks_event_reasons.sw_power_cap,clocks_event_reasons.hw_slowdown --format=csv
if [ -n "$BENCH_M" ]; then
  timeout 220 python3 benchmarks/gpu/bench_qgemm_gpu.py --m $BENCH_M >$OUT/bench.log 2>&1
  tail -5 $OUT/bench.log
  cp benchmarks/results/qgemm_gpu-* $OUT/ 2>/dev/null
fi
true
