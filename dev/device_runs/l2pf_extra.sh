#!/usr/bin/env bash
# After qgemv_variants.sh (EXTRA): the tiled GEMM (M = 64, 128) on the base build and the cp.async-256B build,
# then Nsight Compute (memory workload, stalls) on the base build's M = 1 int4 GEMV, 31B gate_up and down.
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
for b in x l2pf_cpasync256; do
  VM=64,128 VMETHODS=ours_int4_g32 GEMMA4_LIB_DIR=$PWD/build/$b timeout 90 python3 dev/cuda/qgemv_variants.py $b \
    $OUT/tiled-$b.json 2>&1 | grep -v "^$" | tail -6
done
for shape in gate_up down; do
  SHAPE=$shape GEMMA4_LIB_DIR=$PWD/build/x timeout 150 ncu --kernel-name regex:qgemv_kernel --launch-skip 2 \
    --launch-count 1 --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section SchedulerStats \
    python3 dev/cuda/qgemv_ncu.py >$OUT/ncu-$shape.txt 2>&1
  echo "== ncu $shape"
  grep -E "DRAM Throughput|Duration|Achieved Occupancy|Registers Per|Block Size|Grid Size|Warp Cycles Per Issued|Waves Per SM|L2 Hit|Mem Busy|Max Bandwidth|Issued Warp|No Eligible|Active Warps Per" \
    $OUT/ncu-$shape.txt | sed 's/  */ /g' | head -24
done
