// gemma4::qgemm_cuda_path: reports or forces the CUDA qgemm's route for bf16/fp16 x ("auto" | "tiled" |
// "dequant" | "wgmma" above the GEMV's 32 rows | "ring" or "bulk" GEMV up to 32 rows | "x16" GEMV at 1-2 rows | "resident" GEMV at 1-16 rows;
// qgemm_cuda.cu). Registered in every build; only CUDA calls read it.
#include "quant/qgemm_cuda_path.h"

#include <array>
#include <string>

#include <torch/library.h>

#include "common/named_choice.h"

namespace gemma4::quant {

std::atomic<int>& cuda_path() {
  static std::atomic<int> path{static_cast<int>(CudaPath::automatic)};
  return path;
}

namespace {

// Indexed by CudaPath.
constexpr std::array<const char*, 8> kPathNames = {"auto",  "tiled", "dequant", "ring",
                                                   "bulk",  "wgmma", "x16",     "resident"};

// "" -> report; "auto" | "tiled" | "dequant" | "ring" | "bulk" | "wgmma" | "x16" | "resident" -> set. Returns the route in use.
std::string qgemm_cuda_path(c10::string_view request) {
  const std::string req(request);
  if (!req.empty()) cuda_path() = named_choice("gemma4::qgemm_cuda_path", req, kPathNames);
  return kPathNames[cuda_path()];
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("qgemm_cuda_path", &gemma4::quant::qgemm_cuda_path);
}
