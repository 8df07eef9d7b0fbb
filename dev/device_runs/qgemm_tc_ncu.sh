#!/usr/bin/env bash
# Nsight Compute on the tiled tensor-core qgemm (31B gate_up, int4 g32, bf16 x) of each build named (build/<name>
# from qgemv_variants.sh), at M = $TC_M (default 128 1024): throughput, occupancy, warp stalls, instruction mix;
# the full text to $OUT/ncu-tc-<name>-<M>.txt, the key lines to stdout. NCU_PATH=wgmma NCU_KERNEL=qgemm_wgmma_kernel
# profile the Hopper GEMM instead.
#   EXTRA="bash dev/device_runs/qgemm_tc_ncu.sh x" bash dev/device_runs/qgemv_variants.sh
for b in "$@"; do
  [ -d build/$b ] || continue
  for m in ${TC_M:-128 1024}; do
    f=$OUT/ncu-tc-$b-$m.txt
    GEMMA4_LIB_DIR=$PWD/build/$b timeout 120 ncu --kernel-name regex:${NCU_KERNEL:-qgemm_tc_kernel} --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
      --section LaunchStats --metrics smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active python3 dev/cuda/qgemm_tc_ncu.py $m ${NCU_PATH:-tiled} >$f 2>&1
    echo "== ncu $b M=$m"
    grep -E "Duration|SM Busy|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Registers Per|Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued|Stall|Tensor|Pipe|pipe_tensor|Shared.*Bank|Executed Ipc A|stalled" \
      $f | sed 's/  */ /g' | head -40
  done
done
