// gemma4._C: build information and CPU features. It deliberately links no libtorch, so it imports
// under any torch and lets Python say "rebuild" when the installed torch is not the one the
// operator library (libgemma4_ops.so, beside this module) was compiled against.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>

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
}
