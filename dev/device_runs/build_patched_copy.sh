# Sourced by device-run scripts: copy this tree to /tmp/$1, apply the patch $2 to it (reversed when $3 is -R,
# e.g. a `git diff` of the change, for the tree before it), configure it for sm_90 with the kernel folders
# quant, moe and activation into build/$1, and start its build in the background (6 jobs; `wait` for it). Logs
# to $OUT.   source dev/device_runs/build_patched_copy.sh old change.diff -R
copy=/tmp/$1
rm -rf $copy && mkdir $copy && cp -r CMakeLists.txt pyproject.toml csrc python $copy/
(cd $copy && patch -s $3 -p1 <"$OLDPWD/$2") || { echo "patch $2 $3 failed"; exit 1; }
cmake -S $copy -B build/$1 -G Ninja -DPython_EXECUTABLE="$(which python3)" -DGEMMA4_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 "-DGEMMA4_KERNEL_DIRS=quant;moe;activation" >$OUT/cmake-$1.log 2>&1 ||
  { tail -20 $OUT/cmake-$1.log; exit 1; }
(ninja -C build/$1 -j6 >$OUT/build-$1.log 2>&1; echo "$1 build rc=$?") &
