#!/usr/bin/env bash
# One device call (thirty-first session): Nsight Compute on the x-resident GEMV and on variants of it
# (dev/cuda/resident_energy_variants.py; NCU_VARIANTS, default "noweight": its work with no weight loads), at each
# row count of NCU_M (default "16"; e.g. "1 16"): duration, issue, the stall reasons with their top instructions
# (dev/cuda/ncu_stall_top.py) and each pipe's share of its peak (dev/cuda/ncu_pipes.py).
#   bash dev/device_runs/resident_ncu_variants.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
VARIANTS=${NCU_VARIANTS-noweight}
build_resident_variants "$VARIANTS" || exit 1
rm -f $OUT/cmake-*.log $OUT/build-*.log
for b in x $VARIANTS; do
  for m in ${NCU_M:-16}; do
    echo "== $b M=$m"
    GEMMA4_LIB_DIR=$PWD/build/$b VPATH=resident M=$m timeout 150 ncu --kernel-name regex:qgemv_resident \
      --launch-skip 1 --launch-count 1 --clock-control none --section WarpStateStats --section SourceCounters \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats --import-source no \
      -o /tmp/r python3 dev/cuda/qgemv_ncu.py >/tmp/ncu_run.log 2>&1 || tail -5 /tmp/ncu_run.log
    ncu -i /tmp/r.ncu-rep --page details | grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued|Issue Slots Busy|SM Frequency"
    ncu -i /tmp/r.ncu-rep --page raw --csv >/tmp/raw.csv && python3 dev/cuda/ncu_pipes.py /tmp/raw.csv
    ncu -i /tmp/r.ncu-rep --page source --csv --print-source sass >/tmp/sass.csv && python3 dev/cuda/ncu_stall_top.py /tmp/sass.csv
    rm -f /tmp/r.ncu-rep
  done
done
true
