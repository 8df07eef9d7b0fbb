#!/usr/bin/env bash
# One device call for the 2-8-row route (resident_gemv_wins in csrc/quant/qgemm_cuda.cu: the x-resident GEMV where
# the HBM is below 4 TB/s, the copy-engine GEMV above), on either card: the full build, the bandwidth the rule reads
# (torch's device properties, as the route test reads them), the forced x-resident and copy-engine GEMVs and `auto`
# at 1-16 rows on every int4 g32 shape of the released models that both can take (2^25 values or more, two 16-row
# tiles an SM, K short enough for shared memory at 8 rows), the route and x-resident tests, on an H200 the issue's
# benchmark (its results copied to $OUT), then the whole test suite in the time left (cuda_suite.sh: SIGINT at
# the limit, so pytest still prints its counts).
# The rule is not in the tree yet (no device ran it when it was written, 2026-12-08): the script applies
# dev/cuda/experiments/resident_rows_by_bandwidth.patch (the rule, the bandwidth helper, the route test) to the
# device's copy first, unless the tree has it already.
#   bash dev/device_runs/route_rows.sh
set -o pipefail
source dev/device_runs/variant_builds.sh  # apply_patch_once, run_tests, run_bench
apply_patch_once dev/cuda/experiments/resident_rows_by_bandwidth.patch
source dev/device_runs/build_sm90.sh
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
TESTS=tests/quant/test_qgemm_cuda.py TEST_K="route_rule or resident" TEST_S=120 run_tests x
case "$(cat $OUT/gpu.txt)" in *H200*) run_bench ;; esac
left=$((570 - SECONDS)); [ $left -gt 30 ] || left=30
TEST_S=$left NO_PROBE=1 bash dev/device_runs/cuda_suite.sh  # the build is done: cmake and ninja find nothing to do
