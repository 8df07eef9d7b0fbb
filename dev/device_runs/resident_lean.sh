#!/usr/bin/env bash
# One device call (nineteenth session): the x-resident GEMV's loads from per-lane row pointers (the working tree)
# against the shipped loads (resident_unlean.patch) and 4 / 5 units in flight (resident_lean_d4/_d5), forced
# "resident" at M = 1, 8, 9, 16; test_qgemm_cuda.py + test_qlora.py on the working tree (the GEMV up to 16 rows
# on sm_90, forced GEMMs at every M), -k resident on the d4 / d5 builds; the auto route at 1-32 rows; the qgemm
# benchmark.                                            bash dev/device_runs/resident_lean.sh
E=dev/cuda/experiments
export XDIRS=quant TESTS=tests/quant/test_qgemm_cuda.py VPATH=resident VM=1,8,9,16 VMETHODS=ours_int4_g32
export PATCHES="$E/resident_unlean.patch $E/resident_lean_d4.patch $E/resident_lean_d5.patch"
export VTESTS="tests/quant/test_qgemm_cuda.py -k resident" VTEST_PATCHES="$E/resident_lean_d4.patch $E/resident_lean_d5.patch"
export EXTRA='
GEMMA4_LIB_DIR=build/x VPATH=auto VM=1,2,8,9,12,16,17,24,32 timeout 100 python3 dev/cuda/qgemv_variants.py auto \
  $OUT/auto.json 2>&1 | grep -v "^$" | tail -30
GEMMA4_LIB_DIR=build/x timeout 200 python3 benchmarks/gpu/bench_qgemm_gpu.py >$OUT/bench.log 2>&1; echo "bench rc=$?"
tail -5 $OUT/bench.log; mkdir -p $FINAL_OUT/results; cp benchmarks/results/qgemm_gpu-* $FINAL_OUT/results/'
bash dev/device_runs/qgemv_variants.sh
