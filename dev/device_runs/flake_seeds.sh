#!/usr/bin/env bash
# One device call: a quant-only sm_90 build, then flake_seeds.py (its docstring says what) with ARGS.
# Usage (copy's root): ARGS='ring 8 0 704 float32 float16 60' bash dev/device_runs/flake_seeds.sh
set -o pipefail
KERNEL_DIRS=${KERNEL_DIRS:-quant} source dev/device_runs/build_sm90.sh
timeout ${TEST_S:-300} python3 dev/device_runs/flake_seeds.py $ARGS 2>&1 | tail -40
