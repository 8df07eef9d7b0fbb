// gemma4._C: build information and CPU features. It deliberately links no libtorch, so it imports
// under any torch and lets Python say "rebuild" when the installed torch is not the one the
// operator library (libgemma4_ops.so, beside this module) was compiled against.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace py = pybind11;

namespace {

std::map<std::string, bool> cpu_features() {
  std::map<std::string, bool> f;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  f["avx2"] = __builtin_cpu_supports("avx2");
  f["fma"] = __builtin_cpu_supports("fma");
  f["f16c"] = __builtin_cpu_supports("f16c");
  f["avx512f"] = __builtin_cpu_supports("avx512f");
  f["avx512bf16"] = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

// glibc's malloc returns the top of its heap to the kernel whenever more than the trim threshold lies free
// there (its dynamic rule sets that to twice the largest block freed so far, a few MB here), so each
// prefill layer's activations, allocated and freed again, come back as fresh pages: the first write to
// each page is a fault. On the 2-core EPYC VM a fault costs ~7 us, as long as a K = 1536 GEMM takes to
// compute a page of its output, and a 128-token bf16 E2B prefill took ~30,000 of them (about a fifth of
// its time under the profiler; docs/performance.md). Fixing both thresholds keeps freed blocks for reuse:
// blocks up to the mmap threshold come from the heap (32 MiB, the most glibc allows and where its own rule
// tops out), and up to trim_bytes of free heap top is kept (Python passes 64 MiB, again where glibc's rule
// tops out: its values from the start). Returns whether glibc took both.
bool keep_freed_memory(int trim_bytes) {
#if defined(__GLIBC__)
  constexpr int kMmapThreshold = 32 << 20;
  return mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1;
#else
  (void)trim_bytes;
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gemma4 build information; the operators live in libgemma4_ops.so";
  m.def("build_info", [] {
    py::dict d;
    d["torch_version"] = GEMMA4_TORCH_VERSION;  // the torch the operator library was built against
    d["cuda"] = static_cast<bool>(GEMMA4_CUDA_ENABLED);
    d["sm90a"] = static_cast<bool>(GEMMA4_SM90A_ENABLED);  // Hopper-only kernels (wgmma) built in
    d["cpu_baseline"] = GEMMA4_CPU_BASELINE;  // ISA the kernels were compiled for
    d["compiler"] = __VERSION__;
    return d;
  });
  m.def("cpu_features", &cpu_features, "ISA extensions of the CPU this process runs on");
  m.def("keep_freed_memory", &keep_freed_memory, py::arg("trim_bytes"),
        "glibc only: keep freed heap memory (up to trim_bytes) for reuse instead of returning it to the kernel");
}
