#!/usr/bin/env bash
# Ran at 241732c (its patches are against that tree; gemm_forced_every_m.patch has since been applied and removed,
# and resident_w8t2d4.patch was resident_w8t2.patch with kResDepth = 4).
# One device call (nineteenth session): the x-resident GEMV with 8 warps a block and the registers that frees
# (resident_w8t2 / _w8t2d4: two 16-row tiles a unit, 3 / 4 units in flight; resident_w8d6: one tile, 6 units),
# timed beside the shipped build at M = 1, 8, 9, 16 (forced "resident"); test_qgemm_cuda.py on the w8t2 build and
# on gemm_forced_every_m's; the Hopper and tiled GEMMs against the GEMV at 16-32 rows; Nsight Compute's warp
# states of the shipped and w8t2 kernels at 16 rows.        bash dev/device_runs/resident_tiles.sh
E=dev/cuda/experiments
export XDIRS=quant TESTS=none VPATH=resident VM=${VM:-1,8,9,16} VMETHODS=ours_int4_g32
export PATCHES="$E/resident_w8t2.patch $E/resident_w8t2d4.patch $E/resident_w8d6.patch $E/gemm_forced_every_m.patch"
export VTESTS=tests/quant/test_qgemm_cuda.py VTEST_PATCHES="$E/resident_w8t2.patch $E/gemm_forced_every_m.patch"
export EXTRA='
for p in wgmma tiled; do GEMMA4_LIB_DIR=build/gemm_forced_every_m VPATH=$p VM=16,17,20,24,32 \
  timeout 100 python3 dev/cuda/qgemv_variants.py gemm-$p $OUT/gemm-$p.json 2>&1 | grep -v "^$" | tail -12; done
GEMMA4_LIB_DIR=build/x VPATH=auto VM=16,17,20,24,32 timeout 100 python3 dev/cuda/qgemv_variants.py auto $OUT/gemm-auto.json \
  2>&1 | grep -v "^$" | tail -12
for b in x resident_w8t2; do GEMMA4_LIB_DIR=build/$b VPATH=resident M=16 timeout 120 ncu --kernel-name regex:qgemv_resident \
  --launch-skip 2 --launch-count 1 --clock-control none --section SpeedOfLight --section WarpStateStats \
  --section SchedulerStats \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio" python3 dev/cuda/qgemv_ncu.py >$OUT/ncu-$b.log 2>&1
  echo "== ncu $b"; grep -E "Throughput|Warp Cycles|Eligible|Issued" $OUT/ncu-$b.log | head -12
  grep stalled $OUT/ncu-$b.log | sort -k3 -g -r | head -8; done'
bash dev/device_runs/qgemv_variants.sh
