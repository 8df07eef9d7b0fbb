// Which route the CUDA qgemm takes (qgemm_cuda.cu): its own rule ("auto"), or one forced by
// gemma4::qgemm_cuda_path so that tests reach every path on small shapes: "tiled" / "dequant" / "wgmma" (the
// Hopper GEMM, qgemm_wgmma_sm90a.cu, on an sm_90 device of a build with sm_90a code) above the GEMV's rows, "ring" (the shared-memory ring GEMV, qgemv_ring.cuh) or "bulk" (the bulk-copy GEMV, qgemv_bulk.cuh, where its
// scales fit) at every GEMV row count, "x16" (the int16-activation GEMV, qgemv_x16.cuh) where it fits (1-2 rows), "resident" (the x-resident
// int4 GEMV, qgemv_resident.cuh) where it fits (1-16 rows of bf16/fp16 x short enough for shared memory). Plain state,
// in every build.
#pragma once
#include <atomic>

namespace gemma4::quant {

enum class CudaPath : int { automatic = 0, tiled = 1, dequant = 2, ring = 3, bulk = 4, wgmma = 5, x16 = 6, resident = 7 };

std::atomic<int>& cuda_path();

}  // namespace gemma4::quant
