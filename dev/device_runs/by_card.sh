#!/usr/bin/env bash
# One device call for either card (a request for an H200 may get an H100). First dev/cuda/mma_sync_rate_probe.cu
# (seconds: the shipped GEMV's MMA loop alone, beside the warpgroup loop that wgmma_chain_probe.cu measured in the
# thirty-sixth session). Then resident_units.sh on the tree and UNIT_VARIANTS (default the thirty-seventh session's
# question: `scaleafter`, the scale-after-MMA loop's instruction stream on this layout, with and without the weight
# stream, beside `noweight`; dev/cuda/resident_energy_variants.py), one power round, the routes probed at 1-16 rows,
# no tests. On an H200 also the figures first (BENCH=1: benchmarks/gpu/bench_qgemm_gpu.py on the tree, its
# results to commit as benchmarks/results/qgemm_gpu-nvidia-h200.*) and the 2-8-row route decision from the probes.
#   bash dev/device_runs/by_card.sh
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 dev/cuda/mma_sync_rate_probe.cu -o /tmp/msr &&
  /tmp/msr | tee $OUT/mma_sync_rate.log
case "$name" in
  *H200*) export BENCH=1 ;;
esac
NO_BASE=1 ROUNDS=${ROUNDS:-1} TESTS=${TESTS:-none} \
  UNIT_VARIANTS=${UNIT_VARIANTS-scaleafter noweight scaleafter_noweight} bash dev/device_runs/resident_units.sh
