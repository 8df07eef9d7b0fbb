// Requests by name to the ops that report or force a route (gemma4::qgemm_cpu_isa, gemma4::qgemm_cuda_path):
// the request's index in the op's list of names, or one error naming the op and listing them.
#pragma once
#include <array>
#include <cstddef>
#include <string>

#include <c10/util/Exception.h>

namespace gemma4 {

template <std::size_t N>
int named_choice(const char* op, const std::string& request, const std::array<const char*, N>& names) {
  for (std::size_t i = 0; i < N; ++i)
    if (request == names[i]) return static_cast<int>(i);
  std::string list = "''";
  for (const char* name : names) list += std::string(", '") + name + "'";
  TORCH_CHECK(false, op, ": request must be ", list, ", got '", request, "'");
}

}  // namespace gemma4
