// gemma4::qgemm_cuda_path: reports or forces the CUDA qgemm's route for bf16/fp16 x above the GEMV's 32 rows
// ("auto" | "tiled" | "dequant"; qgemm_cuda.cu). Registered in every build; only CUDA calls read it.
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
  return p == static_cast<int>(CudaPath::tiled) ? "tiled" : p == static_cast<int>(CudaPath::dequant) ? "dequant" : "auto";
}

// "" -> report; "auto" | "tiled" | "dequant" -> set. Returns the route in use.
std::string qgemm_cuda_path(c10::string_view request) {
  const std::string req(request);
  if (req == "auto") {
    cuda_path() = static_cast<int>(CudaPath::automatic);
  } else if (req == "tiled") {
    cuda_path() = static_cast<int>(CudaPath::tiled);
  } else if (req == "dequant") {
    cuda_path() = static_cast<int>(CudaPath::dequant);
  } else {
    TORCH_CHECK(req.empty(), "gemma4::qgemm_cuda_path: request must be '', 'auto', 'tiled' or 'dequant', got '", req,
                "'");
  }
  return path_name(cuda_path());
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CompositeExplicitAutograd, m) {
  m.impl("qgemm_cuda_path", &gemma4::quant::qgemm_cuda_path);
}
