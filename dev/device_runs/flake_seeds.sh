#!/usr/bin/env bash
# One device call: a quant-only sm_90 build, then flake_seeds.py (its docstring says what) with ARGS, then (with
# FILE_K) the test file's cases matching FILE_K under 14 xdist workers, as in the full suite.
# Usage (copy's root): ARGS='ring 8 0 704 float32 float16 30' FILE_K=float32 bash dev/device_runs/flake_seeds.sh
set -o pipefail
KERNEL_DIRS=${KERNEL_DIRS:-quant;linear} source dev/device_runs/build_sm90.sh
rm -f $OUT/cmake.log $OUT/build.log
timeout ${TEST_S:-150} python3 dev/device_runs/flake_seeds.py $ARGS 2>&1 | tail -30
[ -z "$FILE_K" ] || timeout ${FILE_S:-120} python3 -m pytest -q -p no:cacheprovider -n 14 --tb=short \
  tests/quant/test_qgemm_cuda.py -k "$FILE_K" >$OUT/file.log 2>&1
[ -z "$FILE_K" ] || grep -E "^(FAILED|E )|passed|failed|seed" $OUT/file.log | cut -c1-300 | tail -30
true
