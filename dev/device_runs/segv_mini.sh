#!/usr/bin/env bash
# GPU machine: build segv_mini_ops.cpp against the installed torch and call each op in its own process.
set -u
inc=$(python3 -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
lib=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
g++ -std=c++20 -O2 -shared -fPIC $inc dev/device_runs/segv_mini_ops.cpp -L$lib -lc10 -ltorch_cpu -o /tmp/segvx.so || exit 1
for op in plain sizes ownfmt int64 brackets; do
  python3 -c "
import torch; torch.ops.load_library('/tmp/segvx.so')
try: getattr(torch.ops.segvx, '$op')(torch.randn(3, 4))
except RuntimeError as e: print('raised:', str(e).splitlines()[0])" 2>&1 | tail -1; echo "  $op rc=${PIPESTATUS[0]}"
done
# Does libtorch_cpu carry (and export) its own copy of libstdc++'s number formatting?
nm -D --defined-only $lib/libtorch_cpu.so | grep -cE " _ZNSo9_M_insertI|_ZNKSt7num_put" | sed 's/^/libtorch_cpu exported ostream number-insert symbols: /'
nm -D --defined-only $lib/libtorch_cpu.so | grep -E " _ZNSo9_M_insertI|_ZNKSt7num_putIcSt19ostreambuf" | head -5
ldd $lib/libtorch_cpu.so | grep -E "stdc|gcc_s"
