#!/usr/bin/env bash
# On the GPU machine: does a CPU op that raises (bad input) crash the process with this torch? Prints the
# toolchain facts that bear on it (compiler, C++ ABI, OpenMP runtimes loaded), then the probe, then a
# native backtrace under gdb when there is one. Needs GEMMA4_LIB_DIR pointing at a build.
set -u
py=$(command -v python3)
echo "== toolchain"; (gcc --version | head -1; nvcc --version | tail -1) 2>&1
"$py" - <<'PY'
import torch
print("torch", torch.__version__, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print(torch.__config__.parallel_info().splitlines()[:4])
PY
echo "== libraries the op library links"; ldd "$GEMMA4_LIB_DIR/libgemma4_ops.so" | grep -E "gomp|omp|stdc|torch_cpu|c10" 
cat > /tmp/probe.py <<'PY'
import faulthandler, sys, torch
faulthandler.enable()
import gemma4.ops  # noqa: F401  (loads the op library)
cases = {
    "rms_norm int32 x": lambda: torch.ops.gemma4.rms_norm(torch.randn(4, 16).int(), torch.randn(16), 1e-6),
    "rms_norm int32 x under cuda default device": None,
}
try:
    torch.ops.gemma4.rms_norm(torch.randn(4, 16).int(), torch.randn(16), 1e-6)
except RuntimeError as e:
    print("raised ok:", str(e).splitlines()[0])
with torch.device("cuda"):
    try:
        torch.ops.gemma4.rms_norm(torch.randn(4, 16, device="cpu").int(), torch.randn(16, device="cpu"), 1e-6)
    except RuntimeError as e:
        print("raised ok under cuda device mode:", str(e).splitlines()[0])
try:
    torch.ops.gemma4.rms_norm(torch.randn(4, 16, device="cuda").int(), torch.randn(16, device="cuda"), 1e-6)
except RuntimeError as e:
    print("raised ok on cuda:", str(e).splitlines()[0])
print("probe done")
PY
echo "== probe"; "$py" /tmp/probe.py; echo "exit $?"
if command -v gdb >/dev/null; then
  echo "== gdb"; gdb -q -batch -ex run -ex bt --args "$py" /tmp/probe.py 2>&1 | grep -v "^\[New Thread\|^\[Thread" | tail -40
else
  echo "no gdb"
fi
