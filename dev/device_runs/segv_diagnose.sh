#!/usr/bin/env bash
# On the GPU machine, after a build (GEMMA4_LIB_DIR set): why a bad-input error kills a pytest process
# there (rc 139) while the same raise in a plain python process is fine. Variants: which imports come
# first, and the native stack under pytest (-s: pytest must not capture fd 2, faulthandler off).
gcc -shared -fPIC -O0 -g -o /tmp/segv_trace.so dev/device_runs/segv_trace.c || exit 1
cat > /tmp/raise.py <<'PY'
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import torch, gemma4.ops  # noqa: F401
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if any(k in l for k in ("stdc++", "gcc_s", "gomp", "libomp", "iomp"))})
print("loaded:", *libs, sep="\n  ")
for i in range(50):
    try:
        torch.ops.gemma4.rms_norm(torch.randn(4, 16).int(), torch.randn(16), 1e-6)
    except RuntimeError as e:
        msg = str(e)
print("ok after", sys.argv[1:], msg.splitlines()[0])
PY
for pre in "" "transformers" "scipy sklearn" "pandas pyarrow" "pytest"; do
  echo "=== imports first: ${pre:-none}"
  LD_PRELOAD=/tmp/segv_trace.so timeout 60 python3 /tmp/raise.py $pre 2>&1 | tail -30; echo "rc=${PIPESTATUS[0]}"
done
echo "=== pytest -s tests/ops/test_norm.py -k bad_inputs"
LD_PRELOAD=/tmp/segv_trace.so timeout 120 python3 -m pytest -q -s -p no:cacheprovider -p no:xdist -p no:faulthandler \
  tests/ops/test_norm.py -k "bad_inputs and cpu" 2>&1 | tail -60; echo "rc=${PIPESTATUS[0]}"
