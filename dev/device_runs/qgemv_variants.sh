#!/usr/bin/env bash
# One device call to compare CUDA qgemm GEMV variants: builds the working tree (XDIRS: kernel folders, default
# all) and, in parallel, csrc/quant/ alone of a copy of the tree with each patch of PATCHES (default
# dev/cuda/experiments/*.patch) applied; runs TESTS on the working tree's build, then
# dev/cuda/qgemv_variants.py on every build and a table of them, then EXTRA (a command) if set. Logs go
# to $OUT/logs.tgz (the device returns few files). TESTS=none skips the working tree's tests; VTESTS runs
# tests on each patch's build too.   XDIRS=quant bash dev/device_runs/qgemv_variants.sh
set -o pipefail
FINAL_OUT=$OUT; OUT=$OUT/logs; mkdir -p $OUT  # many logs: tarred into one file at the end
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
PY=$(which python3)
cfg() {  # dir, kernel dirs, extra CUDA flags, source root
  cmake -S ${4:-.} -B $1 -G Ninja -DPython_EXECUTABLE=$PY -DGEMMA4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGEMMA4_KERNEL_DIRS=$2 -DCMAKE_CUDA_FLAGS="$3" >$OUT/cmake-$(basename $1).log 2>&1
}
start=$(date +%s)
cfg build/x ${XDIRS:-all} "" && (ninja -C build/x -j10 >$OUT/build-x.log 2>&1; echo "x rc=$?") &
for p in ${PATCHES:-dev/cuda/experiments/*.patch}; do
  v=$(basename $p .patch); src=/tmp/variant-$v
  mkdir -p $src && cp -r CMakeLists.txt csrc python pyproject.toml $src/ && patch -s -d $src -p1 <$p || continue
  cfg $PWD/build/$v quant "" $src && (ninja -C build/$v -j4 >$OUT/build-$v.log 2>&1; echo "$v rc=$?") &
done
wait
echo "builds: $(( $(date +%s) - start )) s"
grep -h -B2 -A12 " error" $OUT/build-*.log | head -60
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
start=$(date +%s)
if [ "${TESTS:-}" != none ]; then
  GEMMA4_LIB_DIR=$PWD/build/x timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 \
    ${TESTS:-tests/quant/test_qgemm_cuda.py tests/quant/test_qlora.py} >$OUT/tests.log 2>&1
  echo "tests rc=$? ($(( $(date +%s) - start )) s)"
  grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
fi
# VTESTS (e.g. tests/quant/test_qgemm_cuda.py): also run on the build of each patch of VTEST_PATCHES (default PATCHES)
for p in ${VTESTS:+${VTEST_PATCHES:-${PATCHES:-dev/cuda/experiments/*.patch}}}; do
  v=$(basename $p .patch); [ -d build/$v ] || continue; start=$(date +%s)
  GEMMA4_LIB_DIR=$PWD/build/$v timeout ${VTEST_S:-150} python3 -m pytest -q -p no:cacheprovider -n 8 -x \
    $VTESTS >$OUT/tests-$v.log 2>&1
  echo "tests $v rc=$? ($(( $(date +%s) - start )) s): $(grep -E "passed|failed" $OUT/tests-$v.log | tail -1)"
  grep -E "^(FAILED|ERROR)" $OUT/tests-$v.log | cut -c1-220 | head -5
done
for b in x $(for p in ${PATCHES:-dev/cuda/experiments/*.patch}; do basename $p .patch; done); do
  [ -d build/$b ] || continue
  GEMMA4_LIB_DIR=$PWD/build/$b timeout 120 python3 dev/cuda/qgemv_variants.py $b $OUT/variant-$b.json \
    >$OUT/variant-$b.log 2>&1 || { echo "variant $b failed"; tail -5 $OUT/variant-$b.log; }
done
python3 - <<'PY'
import json, glob, os
rows = [r for f in sorted(glob.glob(os.environ["OUT"] + "/variant-*.json")) for r in json.load(open(f))]
keys = sorted({(r["shape"], r["method"], r["M"]) for r in rows})
names = sorted({r["variant"] for r in rows})
print("shape        method               M  " + " ".join(f"{n:>7s}" for n in names))
t = {(r["variant"], r["shape"], r["method"], r["M"]): r["us"] for r in rows}
for k in keys:
    print(f"{k[0]:12s} {k[1]:18s} {k[2]:4d} " + " ".join(f"{t.get((n,) + k, float('nan')):7.1f}" for n in names))
PY
[ -z "$EXTRA" ] || eval "$EXTRA"
tar -C $FINAL_OUT -czf $FINAL_OUT/logs.tgz logs && rm -rf $OUT
true
