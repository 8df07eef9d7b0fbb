#!/usr/bin/env bash
# One device call (thirtieth session): where the x-resident GEMV's energy goes. The tree (build/x) and variants of it
# with one part of the per-unit work taken out (dev/cuda/resident_energy_variants.py: ENERGY_VARIANTS, default
# "nolds nodeq nomma"), built side by side (quant and linear, sm_90), then dev/cuda/resident_power_probe.py on the
# forced x-resident route of each (POWER_M rows, default 1 and 16): the time, and the sustained time, SM clock and
# board power under a 2 s loop. Then, with SUITE=1, the whole test suite on a full build of the tree.
#   bash dev/device_runs/resident_energy.sh
set -o pipefail
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.limit --format=csv,noheader | tee $OUT/gpu.txt
source dev/device_runs/variant_builds.sh
start=$(date +%s)
VARIANTS=${ENERGY_VARIANTS:-nolds nodeq nomma}
for v in $VARIANTS; do
  rm -rf /tmp/$v && mkdir /tmp/$v && cp -r csrc python CMakeLists.txt pyproject.toml /tmp/$v/
  python3 dev/cuda/resident_energy_variants.py /tmp/$v $v || exit 1
  (cfg /tmp/$v $PWD/build/$v && ninja -C build/$v -j4 >$OUT/build-$v.log 2>&1; echo "$v rc=$?") &
done
(cfg . build/x && ninja -C build/x -j4 >$OUT/build-x.log 2>&1; echo "x rc=$?") &
wait
builds_done $start
export PYTHONPATH=$PWD/python:$PWD PYTHONUNBUFFERED=1
for round in 1 2; do
  for b in x $VARIANTS; do
    GEMMA4_LIB_DIR=$PWD/build/$b POWER_M=${POWER_M:-1,16} timeout 100 python3 dev/cuda/resident_power_probe.py \
      resident $b 2>&1 | grep -E " us |Error"
  done
done
rm -f $OUT/cmake-*.log
true
