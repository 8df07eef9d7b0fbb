#!/usr/bin/env bash
# One device call for the H200 that issue 10's figures name (a request for one may get an H100): on an H200 the
# issue's figures (benchmarks/gpu/bench_qgemm_gpu.py on the tree, BENCH=1 of resident_units.sh; its results to
# commit as benchmarks/results/qgemm_gpu-nvidia-h200.*), one power round of the tree on the forced x-resident
# route and `auto`, and the routes probed at 1-16 rows (if the x-resident GEMV wins 2-8 rows there too, as on
# the H100, `resident_gemv_wins` in csrc/quant/qgemm_cuda.cu takes M >= 2). No variants (UNIT_VARIANTS to add
# some), no tests. On an H100 nothing: everything left to time there was timed in the thirty-seventh session
# (dev/device_runs/2026-12-07q-h100-scaleafter.log).
#   bash dev/device_runs/by_card.sh            (BENCH_ONLY=1: the build and the benchmark alone)
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
case "$name" in
  *H200*) [ -n "${BENCH_ONLY:-}" ] && exec env ENERGY_VARIANTS= ROUNDS=0 BENCH=1 bash dev/device_runs/resident_energy.sh
    NO_BASE=1 ROUNDS=${ROUNDS:-1} TESTS=${TESTS:-none} BENCH=1 UNIT_VARIANTS=${UNIT_VARIANTS-} \
    bash dev/device_runs/resident_units.sh ;;
  *) echo "not an H200: nothing to run" ;;
esac
