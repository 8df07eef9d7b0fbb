#!/usr/bin/env bash
# One device call: build for sm_90, the CUDA tests of the loss op / LoRA / training, a profile of our GPU
# training step (dev/train/profile_gpu_step.py), then benchmarks/gpu/bench_train.py. Logs to $OUT.
set -o pipefail
source dev/device_runs/build_sm90.sh
timeout ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -n 8 ${TESTS:-tests/ops/test_softcap_cross_entropy.py tests/training tests/lora} \
  >$OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -20
[ -z "$EXTRA" ] || eval "$EXTRA"  # e.g. a micro-benchmark: EXTRA="python3 dev/train/bench_lora_ops_gpu.py"
for impl in ${IMPLS:-ours}; do
  timeout ${PROF_S:-150} python3 dev/train/profile_gpu_step.py --impl $impl --out $OUT/prof-$impl > $OUT/prof-$impl.log 2>&1
  echo "profile $impl rc=$?"; grep "forward / backward" $OUT/prof-$impl.txt | cut -c1-200; head -1 $OUT/prof-$impl.txt
done
[ -n "$NO_BENCH" ] || { timeout ${TRAIN_S:-300} python3 benchmarks/gpu/bench_train.py --steps ${STEPS:-4} --timeout 200 > $OUT/train.log 2>&1;
  echo "train rc=$?"; cut -c1-400 $OUT/train.log | tail -8; cp benchmarks/results/train_gpu-* $OUT/ 2>/dev/null; }
true
