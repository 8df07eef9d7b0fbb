#!/usr/bin/env bash
# GPU machine: which throws kill the process? segv_unwind_ops.cpp built with plain flags and with the
# operator library's flags, each op in its own process; then the real rms_norm size error with a native
# stack (segv_trace.c preloaded).
set -u
inc=$(python3 -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
lib=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
ours="-O3 -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 -fopenmp -D_GLIBCXX_USE_CXX11_ABI=1"
for variant in plain ours; do
  flags="-O2"; [ $variant = ours ] && flags="$ours"
  g++ -std=c++20 $flags -shared -fPIC $inc dev/device_runs/segv_unwind_ops.cpp -L$lib -lc10 -ltorch_cpu -o /tmp/segvu_$variant.so || exit 1
  for op in bare local local_plain holder caught; do
    python3 -c "
import torch; torch.ops.load_library('/tmp/segvu_$variant.so')
try: getattr(torch.ops.segvu, '$op')(torch.randn(3, 4))
except RuntimeError as e: print('raised:', str(e).splitlines()[0])" 2>&1 | tail -1; echo "  $variant $op rc=${PIPESTATUS[0]}"
  done
done
gcc -shared -fPIC -O0 -g -o /tmp/segv_trace.so dev/device_runs/segv_trace.c || exit 1
echo "=== rms_norm size error, native stack"
LD_PRELOAD=/tmp/segv_trace.so python3 -c "
import torch, gemma4.ops
torch.ops.gemma4.rms_norm(torch.randn(4, 16), torch.randn(15), 1e-6)" 2>&1 | tail -40
echo "=== compile line of the library"
grep -m1 -o '"command": "[^"]*rms_norm_cpu[^"]*"' ${GEMMA4_LIB_DIR}/compile_commands.json 2>/dev/null || ninja -C ${GEMMA4_LIB_DIR} -t commands | grep -m1 rms_norm_cpu
