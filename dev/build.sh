#!/usr/bin/env bash
# Developer build into its own folder, so several people (or agents) can build at once:
#   dev/build.sh NAME [KERNEL_DIRS]     e.g. dev/build.sh attn attention   (default: all)
# then: export GEMMA4_LIB_DIR=build/dev-NAME   (gemma4 loads _C and the op library from there)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?name}
dirs=${2:-all}
cmake -S . -B "build/dev-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" -DGEMMA4_KERNEL_DIRS="$dirs" >/dev/null
ninja -C "build/dev-$name" -j "${MAX_JOBS:-2}"
echo "export GEMMA4_LIB_DIR=$PWD/build/dev-$name"
