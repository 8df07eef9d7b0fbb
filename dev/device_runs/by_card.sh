#!/usr/bin/env bash
# One device call whose work depends on the card that came (a request for an H200 may get an H100). On either card
# first dev/cuda/wgmma_chain_probe.cu (seconds); then on an H200 the figures and the 2-8-row route decision
# (resident_units.sh with BENCH=1, startpf against the tree only, one power round, no tests), on an H100 the
# warpgroup kernel's unit-batched variant and its Nsight profile at one row.
# LEAN=1 (a short call): no variants, power rounds or tests on the H200; no tests or Nsight on the H100.
# NO_UB=1: on the H100 the probe and Nsight only (no unit-batched build: the probe times its loop shape alone).
#   bash dev/device_runs/by_card.sh
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 dev/cuda/wgmma_chain_probe.cu -o /tmp/wcp &&
  /tmp/wcp | tee $OUT/wgmma_chain.log
if [ -n "${LEAN:-}" ]; then
  export TESTS=none ROUNDS=0 UNIT_VARIANTS= NO_NCU=1
fi
case "$name" in
  *H200*) NO_BASE=1 ROUNDS=${ROUNDS:-1} BENCH=1 TESTS=${TESTS:-none} UNIT_VARIANTS=${UNIT_VARIANTS-startpf} \
    bash dev/device_runs/resident_units.sh ;;
  *) [ -n "${NO_UB:-}" ] || TEST_S=${TEST_S:-60} bash dev/device_runs/resident_wgmma_unit_batch.sh
    [ -n "${NO_NCU:-}" ] || NCU_M=${NCU_M:-1} WGMMA_ONLY=1 bash dev/device_runs/resident_wgmma_ncu.sh ;;
esac
