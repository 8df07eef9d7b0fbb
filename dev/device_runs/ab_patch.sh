#!/usr/bin/env bash
# One device call comparing the working tree with the tree before a patch: builds csrc/quant/ for sm_90 twice in
# parallel (build/x: the working tree; build/base: a copy with PATCH reversed), runs TESTS on build/x, then times
# both builds with dev/cuda/qgemv_variants.py (VM rows, VMETHODS, every shape; VPATH forces a route). Logs to $OUT.
#   PATCH=dev/cuda/experiments/bulk_streamk_pdl.patch VM=1,8,16 bash dev/device_runs/ab_patch.sh
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $OUT/gpu.txt
PY=$(which python3)
rm -rf /tmp/base && mkdir /tmp/base && cp -r csrc python CMakeLists.txt pyproject.toml benchmarks dev /tmp/base/ 2>/dev/null
(cd /tmp/base && patch -R -p1 -s <$OLDPWD/$PATCH) || { echo "patch -R failed"; exit 1; }
cfg() {  # source dir, build dir
  cmake -S $1 -B $2 -G Ninja -DPython_EXECUTABLE=$PY -DGEMMA4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGEMMA4_KERNEL_DIRS=${XDIRS:-quant} >$OUT/cmake-$(basename $2).log 2>&1
}
start=$(date +%s)
cfg . build/x && (ninja -C build/x -j10 >$OUT/build-x.log 2>&1; echo "x rc=$?") &
cfg /tmp/base $PWD/build/base && (ninja -C build/base -j6 >$OUT/build-base.log 2>&1; echo "base rc=$?") &
wait
echo "builds: $(( $(date +%s) - start )) s"
grep -h -B2 -A12 " error" $OUT/build-*.log | head -40
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
if [ "${TESTS:-}" != none ]; then
  start=$(date +%s)
  GEMMA4_LIB_DIR=$PWD/build/x timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n 8 \
    ${TESTS:-tests/quant/test_qgemm_cuda.py} ${TEST_K:+-k "$TEST_K"} >$OUT/tests.log 2>&1
  echo "tests rc=$? ($(( $(date +%s) - start )) s)"
  grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests.log | cut -c1-220 | tail -30
fi
for round in 1 2; do for b in base x; do
  VM=${VM:-1,2,4,8,16} GEMMA4_LIB_DIR=$PWD/build/$b timeout 150 python3 dev/cuda/qgemv_variants.py $b$round \
    $OUT/variant-$b$round.json >$OUT/variant-$b$round.log 2>&1 || { echo "variant $b failed"; tail -5 $OUT/variant-$b$round.log; }
done; done
python3 - <<'PY'
import json, glob, os
rows = [r for f in sorted(glob.glob(os.environ["OUT"] + "/variant-*.json")) for r in json.load(open(f))]
keys = sorted({(r["shape"], r["method"], r["M"]) for r in rows})
names = sorted({r["variant"] for r in rows})
t = {(r["variant"], r["shape"], r["method"], r["M"]): r["us"] for r in rows}
print("shape        method               M  " + " ".join(f"{n:>8s}" for n in names))
for k in keys:
    print(f"{k[0]:12s} {k[1]:18s} {k[2]:4d} " + " ".join(f"{t.get((n,) + k, float('nan')):8.1f}" for n in names))
PY
true
