#!/usr/bin/env bash
# One device call for the 2-8-row route (resident_gemv_wins in csrc/quant/qgemm_cuda.cu: the x-resident GEMV where
# the HBM is below 4 TB/s, the copy-engine GEMV above), on either card: the full build, the bandwidth the rule reads
# (torch's device properties, as the route test reads them), the forced x-resident and copy-engine GEMVs and `auto`
# at 1-16 rows on every int4 g32 shape of the released models that both can take (2^25 values or more, two 16-row
# tiles an SM, K short enough for shared memory at 8 rows), the route and x-resident tests, on an H200 the issue's
# benchmark (benchmarks/gpu/bench_qgemm_gpu.py, its results copied to $OUT), then the whole test suite in the time
# left (SIGINT at the limit: pytest still prints its counts).
# The rule is not in the tree yet (no device ran it when it was written, 2026-12-08): the script applies
# dev/cuda/experiments/resident_rows_by_bandwidth.patch (the rule, the bandwidth helper, the route test) to the
# device's copy first. Once the rule is in the tree, the patch no longer applies and the script says so and runs on.
#   bash dev/device_runs/route_rows.sh
set -o pipefail
P=dev/cuda/experiments/resident_rows_by_bandwidth.patch
{ git apply $P 2>/dev/null || patch -p1 -s -N -r - <$P >/dev/null 2>&1; } && echo "rule patch applied" ||
  echo "rule patch not applied (already in the tree?)"
source dev/device_runs/build_sm90.sh
rm -f $OUT/cmake.log $OUT/build.log
python3 -c "
import torch
p = torch.cuda.get_device_properties(0)
print(f'{p.name}: memory clock {p.memory_clock_rate} kHz, bus {p.memory_bus_width} bits,',
      f'{2e3 * p.memory_clock_rate * p.memory_bus_width / 8 / 1e12:.2f} TB/s peak')"
# 31B gate_up / q (sliding, full) / o (sliding), E4B gate_up, E2B gate_up of layers 15-34 (12288 wide)
SHAPES="31B gate_up:43008:5376,31B q:8192:5376,31B q full:16384:5376,31B o:5376:8192,E4B gate_up:20480:2560"
SHAPES="$SHAPES,E2B wide gate_up:24576:1536"
for route in resident bulk auto; do
  PROBE_SHAPES="$SHAPES" PROBE_M=${PROBE_M:-1,2,3,4,8,9,16} timeout 150 python3 dev/cuda/resident_probe.py \
    tree $route $OUT/probe-$route.json 2>&1 | grep -E "M=|Error"
done
# the route tests first (the rule's own test among them), then the rest below in the time left
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests/quant/test_qgemm_cuda.py -k "route_rule or resident" \
  >$OUT/route-tests.log 2>&1; echo "route tests rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/route-tests.log | cut -c1-220 | tail -10
case "$(cat $OUT/gpu.txt)" in
  *H200*)
    timeout 200 python3 benchmarks/gpu/bench_qgemm_gpu.py >$OUT/bench.log 2>&1; echo "bench rc=$?"
    results=$(ls -t benchmarks/results/qgemm_gpu-nvidia-*.json | head -1)
    grep -A30 '"summary"' $results | head -30
    cp $results ${results%.json}.png $OUT/ ;;
esac
left=$((570 - SECONDS)); [ $left -gt 30 ] || left=30
timeout -s INT -k 20 $left python3 -m pytest -q -p no:cacheprovider -n 8 tests >$OUT/tests.log 2>&1
echo "tests rc=$? at ${SECONDS} s"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
