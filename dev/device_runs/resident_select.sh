#!/usr/bin/env bash
# One device call (twenty-ninth session): an x-resident GEMV change (dev/tmp_ab/change.diff = git diff -- csrc)
# against the tree before it, and the tree with VARIANT_SED applied to VARIANT_FILE or with VARIANT_PATCH (build/v;
# default: three units a group instead of two in qgemv_resident.cuh; VARIANT_SED=none: no variant; an empty
# change.diff makes base the tree), each built side by side (quant and
# linear, sm_90) and timed with dev/cuda/resident_probe.py on the routes PROBE_ROUTES (default the forced "resident"
# and "auto"), rounds alternating; then the x-resident tests on build/x (TEST_K="" for the whole of TESTS),
# benchmarks/gpu/bench_qgemm_gpu.py at BENCH_M rows on build/x if set, and Nsight with NCU=1.
# (Twenty-eighth session's resident_quads.sh, folded in here.)
#   bash dev/device_runs/resident_select.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
VARIANTS="base x v"
if [ "${VARIANT_SED:-}" = none ]; then
  VARIANTS="base x"
else
  copy_tree /tmp/v
  VF=${VARIANT_FILE:-csrc/quant/qgemv_resident.cuh}
  if [ -n "${VARIANT_PATCH:-}" ]; then
    (cd /tmp/v && patch -p1 -s <"$OLDPWD/$VARIANT_PATCH") || { echo "VARIANT_PATCH does not apply"; exit 1; }
  else
    sed -i "${VARIANT_SED:-s/constexpr int kResGroup = 2;/constexpr int kResGroup = 3;/}" /tmp/v/$VF
    cmp -s $VF /tmp/v/$VF && echo "VARIANT_SED changed nothing"
  fi
  (cfg /tmp/v $PWD/build/v && ninja -C build/v -j4 >$OUT/build-v.log 2>&1; echo "v rc=$?") &
fi
build_with_base ${PATCH:-dev/tmp_ab/change.diff} || exit 1
wait
for round in $(seq ${ROUNDS:-2}); do
  for b in $VARIANTS; do
    for route in ${PROBE_ROUTES:-resident auto}; do
      GEMMA4_LIB_DIR=$PWD/build/$b PROBE_M=${PROBE_M:-1,2,4,8,9,12,16} timeout 120 python3 dev/cuda/resident_probe.py \
        $b $route $OUT/probe-$b-$route-$round.json 2>&1 | grep "M="
    done
  done
done
TEST_K=${TEST_K-"resident or route_rule or deterministic"} run_tests
if [ -n "$BENCH_M" ]; then
  GEMMA4_LIB_DIR=$PWD/build/x timeout 200 python3 benchmarks/gpu/bench_qgemm_gpu.py --m $BENCH_M >$OUT/bench.log 2>&1
  tail -5 $OUT/bench.log
  cp benchmarks/results/qgemm_gpu-* $OUT/ 2>/dev/null
fi

# Nsight Compute on build/x at 16 rows: stall reasons and their top instructions (dev/cuda/ncu_stall_top.py)
if [ -n "$NCU" ]; then
  GEMMA4_LIB_DIR=$PWD/build/x VPATH=resident M=16 timeout 200 ncu --kernel-name regex:qgemv_resident --launch-skip 1 \
    --launch-count 1 --clock-control none --section WarpStateStats --section SourceCounters --section SpeedOfLight \
    --import-source no -o $OUT/x16 python3 dev/cuda/qgemv_ncu.py >$OUT/ncu_run.log 2>&1
  ncu -i $OUT/x16.ncu-rep --page details | grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued"
  ncu -i $OUT/x16.ncu-rep --page source --csv --print-source sass >$OUT/x16_sass.csv && rm -f $OUT/x16.ncu-rep
  python3 dev/cuda/ncu_stall_top.py $OUT/x16_sass.csv
fi
true
