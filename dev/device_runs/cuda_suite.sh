#!/usr/bin/env bash
# One device call: build every kernel folder for sm_90, run the whole test suite (CUDA cases included)
# across 8 workers, then the bad-input probe. Logs go to $OUT.  Usage (copy's root): dev/device_runs/cuda_suite.sh
# KERNEL_DIRS narrows the build, but tests/quant needs more than quant/ (its model and MoE tests call
# gemma4::moe_experts_quant, rms_norm, linear: 70 failures on a quant-only build, 2026-12-04f log).
set -o pipefail
source dev/device_runs/build_sm90.sh
rm -f $OUT/cmake.log $OUT/build.log  # built: at most 8 files come back, and tests.log must be one
# SIGINT first: pytest then stops and still prints its counts (what passed before the limit)
timeout -s INT -k 20 ${TEST_S:-300} python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-8} ${TESTS:-tests} ${TEST_K:+-k "$TEST_K"} \
  >$OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -40
[ -n "$NO_PROBE" ] || timeout 120 bash dev/device_runs/bad_input_probe.sh >$OUT/probe.log 2>&1
[ -n "$NO_PROBE" ] || tail -25 $OUT/probe.log
[ -z "$AFTER" ] || eval "$AFTER"
true
