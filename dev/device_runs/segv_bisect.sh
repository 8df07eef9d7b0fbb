#!/usr/bin/env bash
# On the GPU machine (GEMMA4_LIB_DIR set): bisect why a bad-input test segfaults under pytest but a plain
# python raise does not. Each variant runs tests/ops/test_norm.py::test_bad_inputs's body one way.
cat > /tmp/bisect.py <<'PY'
import os, sys, torch
mode = sys.argv[1]
if "threads" in mode:
    torch.set_num_threads(2)
import tests.ops.test_norm as t
def body():
    t.test_bad_inputs()
if "devmode" in mode:
    with torch.device("cpu"):
        body()
else:
    body()
print("ok", mode)
PY
for mode in plain threads devmode threads+devmode; do
  timeout 60 python3 /tmp/bisect.py $mode 2>&1 | tail -3; echo "  rc=${PIPESTATUS[0]} ($mode)"
done
for th in 2 1; do
  GEMMA4_TEST_THREADS=$th timeout 90 python3 -m pytest -q -p no:cacheprovider -p no:xdist tests/ops/test_norm.py -k "bad_inputs" 2>&1 | tail -2
  echo "  rc=${PIPESTATUS[0]} (pytest, threads $th)"
done
