#!/usr/bin/env bash
# One device call whose work depends on the card that came (a request for an H200 may get an H100). On either card
# first dev/cuda/mma_sync_rate_probe.cu (seconds: the shipped GEMV's MMA loop alone, beside the warpgroup loop that
# wgmma_chain_probe.cu measured in the thirty-sixth session); then on an H200 the figures and the 2-8-row
# route decision (resident_units.sh with BENCH=1, startpf against the tree only, one power round, no tests). On an
# H100 nothing more: the warpgroup design it was to profile is closed (dev/cuda/experiments/README.md).
# LEAN=1 (a short call): no variants or power rounds on the H200 (its tests are off either way).
#   bash dev/device_runs/by_card.sh
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 dev/cuda/mma_sync_rate_probe.cu -o /tmp/msr &&
  /tmp/msr | tee $OUT/mma_sync_rate.log
if [ -n "${LEAN:-}" ]; then
  export ROUNDS=0 UNIT_VARIANTS=
fi
case "$name" in
  *H200*) NO_BASE=1 ROUNDS=${ROUNDS:-1} BENCH=1 TESTS=${TESTS:-none} UNIT_VARIANTS=${UNIT_VARIANTS-startpf} \
    bash dev/device_runs/resident_units.sh ;;
esac
