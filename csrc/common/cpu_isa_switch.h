// The two-way instruction-set switch behind gemma4::linear_cpu_isa and gemma4::attention_cpu_isa: AVX2 or one
// faster set. Tests run both paths and benchmarks compare them.
#pragma once
#include <atomic>
#include <string>

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

namespace gemma4 {

// request "" reports the set in use; "auto" takes `fast` where the CPU has it (supported); "avx2" or `fast` forces
// one. needs names what `fast` requires, for the error on a CPU without it.
inline std::string switch_cpu_isa(const char* op, c10::string_view request, std::atomic<bool>& use_fast,
                                  bool supported, const char* fast, const char* needs) {
  const std::string req(request);
  if (req == "avx2") {
    use_fast = false;
  } else if (req == fast) {
    TORCH_CHECK(supported, op, ": this CPU (or OS) does not support ", needs);
    use_fast = true;
  } else if (req == "auto") {
    use_fast = supported;
  } else {
    TORCH_CHECK(req.empty(), op, ": request must be '', 'auto', 'avx2' or '", fast, "', got '", req, "'");
  }
  return use_fast ? fast : "avx2";
}

}  // namespace gemma4
