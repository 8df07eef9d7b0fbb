#!/usr/bin/env bash
# One device call: build every kernel folder for sm_90, re-run the bad-input probes and tests (the
# torch 2.11 SIGSEGV), then the GPU LoRA training benchmark. Logs to $OUT.
set -o pipefail
source dev/device_runs/build_sm90.sh
bash dev/device_runs/segv_mini.sh 2>&1 | grep -v warning | tail -14 | tee $OUT/segv_mini.log
timeout 100 python3 dev/device_runs/segv_which_check.py > $OUT/segv_which.log 2>&1; grep -c "rc= -11" $OUT/segv_which.log | sed 's/^/which-check crashes: /'
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests/ops tests/quant/test_qgemm.py tests/quant/test_qgemm_cuda.py \
  -k "bad or rejects" > $OUT/bad_tests.log 2>&1; tail -1 $OUT/bad_tests.log
timeout ${TRAIN_S:-420} python3 benchmarks/gpu/bench_train.py --steps ${STEPS:-4} --timeout 200 > $OUT/train.log 2>&1
echo "train rc=$?"; cut -c1-400 $OUT/train.log | tail -8
true
