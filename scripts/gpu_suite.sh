#!/usr/bin/env bash
# On a CUDA machine: build with CUDA kernels, run the whole test suite (CUDA tests included), then the
# GPU benchmarks. Logs and results go to $OUT when set (a lent machine's return folder), else build/gpu-suite.
#   scripts/gpu_suite.sh            # build + tests + benchmarks
#   SKIP_BENCH=1 scripts/gpu_suite.sh
#   CUDA_ARCHS=90 BENCHES="bench_model.py --models gemma-4-E2B" scripts/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-suite}
mkdir -p "$out"
jobs=${MAX_JOBS:-$(nproc)}
py=$(command -v python3)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$out/gpu.txt" 2>&1
archs=${CUDA_ARCHS:+-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS}
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$py" -DGEMMA4_CUDA=ON $archs \
  > "$out/build.log" 2>&1 && ninja -C build/gpu -j "$jobs" >> "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s (archs: ${CUDA_ARCHS:-default})"
export GEMMA4_LIB_DIR=$PWD/build/gpu PYTHONPATH=$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}
export GEMMA4_TEST_THREADS=${GEMMA4_TEST_THREADS:-4} PYTHONUNBUFFERED=1
# the notebook tests need Jupyter (nbclient, ipykernel), which a GPU image may lack; they are CPU-only anyway
ignore=$("$py" -c "import nbclient, ipykernel" 2>/dev/null || echo "--ignore=tests/notebooks")
timeout "${TESTS_S:-400}" "$py" -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-4}" $ignore tests > "$out/tests.log" 2>&1
tail -5 "$out/tests.log"
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -30
if [ -z "${SKIP_BENCH:-}" ]; then
  IFS=';' read -ra benches <<< "${BENCHES:-bench_ops.py;bench_attention.py;bench_model.py}"
  for b in "${benches[@]}"; do
    echo "== $b"; timeout "${BENCH_S:-300}" "$py" benchmarks/gpu/$b 2>&1 | grep -v Warning | tail -25
  done > "$out/bench.log" 2>&1
  grep -v "^ " "$out/bench.log" | tail -60
fi
