#!/usr/bin/env bash
# Nsight Compute on the M=1 31B gate_up int4 GEMV of each build named (build/<name> from qgemv_variants.sh):
# SpeedOfLight, occupancy, warp stalls (KERNEL: the kernel's name regex, default qgemv_kernel; VPATH forces a route); the full text to $OUT/ncu-<name>.txt, the key lines to stdout.
#   EXTRA="bash dev/device_runs/qgemv_ncu_variants.sh x nosh16" bash dev/device_runs/qgemv_variants.sh
for b in "$@"; do
  [ -d build/$b ] || continue
  GEMMA4_LIB_DIR=$PWD/build/$b timeout 120 ncu --kernel-name regex:${KERNEL:-qgemv_kernel} --launch-skip 2 --launch-count 1 \
    --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats python3 dev/cuda/qgemv_ncu.py >$OUT/ncu-$b.txt 2>&1
  echo "== ncu $b"
  grep -E "DRAM Throughput|Duration|Achieved Occupancy|Registers Per|Block Size|Grid Size|Warp Cycles Per Issued|Stall|Waves Per SM" \
    $OUT/ncu-$b.txt | sed 's/  */ /g' | head -20
done
