// gemma4::qgemm_cuda_path: reports or forces the CUDA qgemm's route for bf16/fp16 x ("auto" | "tiled" |
// "dequant" | "wgmma" above the GEMV's 32 rows | "ring" or "bulk" GEMV up to 32 rows | "x16" GEMV at 1-2 rows; qgemm_cuda.cu). Registered in every build; only
// CUDA calls read it.
#include "quant/qgemm_cuda_path.h"

#include <string>

#include <torch/library.h>

namespace gemma4::quant {

std::atomic<int>& cuda_path() {
  static std::atomic<int> path{static_cast<int>(CudaPath::automatic)};
  return path;
}

namespace {

const char* path_name(int p) {
  switch (static_cast<CudaPath>(p)) {
    case CudaPath::tiled:
      return "tiled";
    case CudaPath::dequant:
      return "dequant";
    case CudaPath::ring:
      return "ring";
    case CudaPath::bulk:
      return "bulk";
    case CudaPath::wgmma:
      return "wgmma";
    case CudaPath::x16:
      return "x16";
    default:
      return "auto";
  }
}

// "" -> report; "auto" | "tiled" | "dequant" | "ring" | "bulk" | "wgmma" | "x16" -> set. Returns the route in use.
std::string qgemm_cuda_path(c10::string_view request) {
  const std::string req(request);
  if (req == "auto") {
    cuda_path() = static_cast<int>(CudaPath::automatic);
  } else if (req == "tiled") {
    cuda_path() = static_cast<int>(CudaPath::tiled);
  } else if (req == "dequant") {
    cuda_path() = static_cast<int>(CudaPath::dequant);
  } else if (req == "ring") {
    cuda_path() = static_cast<int>(CudaPath::ring);
  } else if (req == "bulk") {
    cuda_path() = static_cast<int>(CudaPath::bulk);
  } else if (req == "wgmma") {
    cuda_path() = static_cast<int>(CudaPath::wgmma);
  } else if (req == "x16") {
    cuda_path() = static_cast<int>(CudaPath::x16);
  } else {
    TORCH_CHECK(req.empty(), "gemma4::qgemm_cuda_path: request must be '', 'auto', 'tiled', 'dequant', 'ring', 'bulk', 'wgmma' or 'x16', got '",
                req, "'");
  }
  return path_name(cuda_path());
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("qgemm_cuda_path", &gemma4::quant::qgemm_cuda_path);
}
