#!/usr/bin/env bash
# Ready for a device call (not run: the thirty-fourth session's device time was spent): Nsight Compute on the
# warpgroup x-resident GEMV (dev/cuda/experiments/resident_wgmma.patch, applied here) at NCU_M rows (default "1 16"),
# and on the shipped x-resident kernel at 16 rows beside it: duration, issue, the stall reasons with their top SASS
# instructions (dev/cuda/ncu_stall_top.py) and each pipe's share of its peak (dev/cuda/ncu_pipes.py). The question:
# where the warpgroup kernel's 12 us at one row go (dev/cuda/experiments/README.md, "The x-resident GEMV on warpgroup
# MMAs": the x copy was ruled out) -- the WARPGROUP.ARRIVE / DEPBAR waits, the loads' long scoreboard, or the fixup.
#   bash dev/device_runs/resident_wgmma_ncu.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
apply_patch_once dev/cuda/experiments/resident_wgmma.patch
cfg . build/x && ninja -C build/x -j16 >$BUILD_LOGS/build-x.log 2>&1 || { tail -30 $BUILD_LOGS/build-x.log; exit 1; }
profile() {  # route, kernel regex, rows
  echo "== $1 M=$3"
  GEMMA4_LIB_DIR=$PWD/build/x VPATH=$1 M=$3 timeout 150 ncu --kernel-name regex:$2 --launch-skip 1 --launch-count 1 \
    --clock-control none --section WarpStateStats --section SourceCounters --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section InstructionStats --import-source no \
    -o /tmp/r python3 dev/cuda/qgemv_ncu.py >/tmp/ncu_run.log 2>&1 || tail -5 /tmp/ncu_run.log
  ncu -i /tmp/r.ncu-rep --page details | grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued|Issue Slots Busy|SM Frequency"
  ncu -i /tmp/r.ncu-rep --page raw --csv >/tmp/raw.csv && python3 dev/cuda/ncu_pipes.py /tmp/raw.csv
  ncu -i /tmp/r.ncu-rep --page source --csv --print-source sass >/tmp/sass.csv && python3 dev/cuda/ncu_stall_top.py /tmp/sass.csv
  rm -f /tmp/r.ncu-rep
}
{
  for m in ${NCU_M:-1 16}; do profile resident_wgmma qgemv_resident_wgmma_kernel $m; done
  profile resident_wgmma resident_wgmma_fixup_kernel 16
  profile resident "qgemv_resident_kernel" 16
} 2>&1 | tee $OUT/ncu.log
