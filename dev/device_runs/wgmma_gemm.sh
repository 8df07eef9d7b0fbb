#!/usr/bin/env bash
# One device call for the Hopper tiled GEMM (csrc/quant/qgemm_wgmma_sm90a.cu): builds csrc/quant/ for sm_90
# (+ the sm_90a file) and, in parallel, once per VARIANTS entry "name:CUDA flags" (e.g.
# "w1:-DGEMMA4_WGMMA_WAIT=1"); runs TESTS on the main build, then times the routes above the GEMV's rows
# (wgmma / tiled / dequant forced, and bf16 cuBLAS) at VM rows on every build. Logs to $OUT.
#   VARIANTS="w1:-DGEMMA4_WGMMA_WAIT=1" bash dev/device_runs/wgmma_gemm.sh
set -o pipefail
source dev/device_runs/variant_builds.sh
gpu_state | tee $OUT/gpu.txt
start=$(date +%s)
cfg . build/x "" && (ninja -C build/x -j10 >$OUT/build-x.log 2>&1; echo "x rc=$?") &
for v in $VARIANTS; do
  name=${v%%:*}; flags=${v#*:}
  cfg . build/$name "$flags" && (ninja -C build/$name -j6 >$OUT/build-$name.log 2>&1; echo "$name rc=$?") &
done
wait
builds_done $start
run_tests
VM=${VM:-33,64,128,256,1024}
for b in x ${VARIANTS:+$(for v in $VARIANTS; do echo ${v%%:*}; done)}; do
  for p in ${PATHS:-wgmma}; do
    VPATH=$p VM=$VM VMETHODS=${VMETHODS:-ours_int4_g32,ours_int8_channel} GEMMA4_LIB_DIR=$PWD/build/$b \
      timeout 150 python3 dev/cuda/qgemv_variants.py $b-$p $OUT/variant-$b-$p.json >$OUT/variant-$b-$p.log 2>&1 ||
      { echo "variant $b-$p failed"; tail -5 $OUT/variant-$b-$p.log; }
  done
done
[ -z "$BASE_PATHS" ] || for p in $BASE_PATHS; do
  VPATH=$p VM=$VM VMETHODS=${VMETHODS:-ours_int4_g32,ours_int8_channel} GEMMA4_LIB_DIR=$PWD/build/x \
    timeout 150 python3 dev/cuda/qgemv_variants.py $p $OUT/variant-$p.json >$OUT/variant-$p.log 2>&1
done
VM=$VM VMETHODS=bf16_cublas GEMMA4_LIB_DIR=$PWD/build/x timeout 100 python3 dev/cuda/qgemv_variants.py cublas \
  $OUT/variant-cublas.json >$OUT/variant-cublas.log 2>&1
python3 - <<'PY'
import json, glob, os
rows = [r for f in sorted(glob.glob(os.environ["OUT"] + "/variant-*.json")) for r in json.load(open(f))]
keys = sorted({(r["shape"], r["method"], r["M"]) for r in rows if r["method"] != "bf16_cublas"})
names = sorted({r["variant"] for r in rows if r["method"] != "bf16_cublas"})
t = {(r["variant"], r["shape"], r["method"], r["M"]): r["us"] for r in rows}
cub = {(r["shape"], r["M"]): r["us"] for r in rows if r["method"] == "bf16_cublas"}
print("shape        method               M  " + " ".join(f"{n:>10s}" for n in names) + "     cublas")
for k in keys:
    print(f"{k[0]:12s} {k[1]:18s} {k[2]:4d} " + " ".join(f"{t.get((n,) + k, float('nan')):10.1f}" for n in names)
          + f" {cub.get((k[0], k[2]), float('nan')):10.1f}")
PY
true
