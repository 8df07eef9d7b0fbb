#!/usr/bin/env bash
# One device call for an x-resident GEMV change (twenty-eighth session: dev/cuda/experiments/resident_quad_scales.patch
# applied to the tree, and its git diff -- csrc in dev/tmp_ab/change.diff): the working tree and
# the tree before the change (PATCH reversed, default dev/tmp_ab/change.diff) built side by side (quant and linear, sm_90), both timed with
# dev/cuda/resident_probe.py on the forced "resident" route and on "auto" (rounds alternating), then TESTS
# (default tests/quant/test_qgemm_cuda.py) on the new build, then benchmarks/gpu/bench_qgemm_gpu.py (BENCH_M) on it.
#   bash dev/device_runs/resident_quads.sh
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
source dev/device_runs/variant_builds.sh
build_with_base ${PATCH:-dev/tmp_ab/change.diff} || exit 1  # made here: git diff -- csrc > dev/tmp_ab/change.diff
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
for round in $(seq ${ROUNDS:-2}); do
  for b in base x; do
    for route in resident auto; do
      GEMMA4_LIB_DIR=$PWD/build/$b PROBE_M=${PROBE_M:-1,2,4,8,9,12,16} timeout 120 python3 dev/cuda/resident_probe.py \
        $b $route $OUT/probe-$b-$route-$round.json 2>&1 | grep "M="
    done
  done
done
run_tests
[ -z "$BENCH_M" ] || GEMMA4_LIB_DIR=$PWD/build/x timeout 200 python3 benchmarks/gpu/bench_qgemm_gpu.py --m $BENCH_M \
  >$OUT/bench.log 2>&1; tail -5 $OUT/bench.log; cp benchmarks/results/qgemm_gpu-* $OUT/ 2>/dev/null
true
