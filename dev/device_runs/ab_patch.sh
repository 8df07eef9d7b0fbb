#!/usr/bin/env bash
# One device call comparing the working tree with the tree before a patch: builds csrc/quant/ (and linear/, which
# it calls) for sm_90 twice in parallel (build/x: the working tree; build/base: a copy with PATCH reversed), runs
# TESTS on build/x, then times both builds with dev/cuda/qgemv_variants.py (VM rows, VMETHODS, every shape; VPATH
# forces a route). Logs to $OUT.
#   git diff > dev/tmp_ab/ab.patch   (in a folder .git/info/exclude does not hide: it travels with the tree)
#   PATCH=dev/tmp_ab/ab.patch VM=1,8,16 bash dev/device_runs/ab_patch.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
build_with_base $PATCH || exit 1
run_tests
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
