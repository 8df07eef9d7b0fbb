// The quantized-GEMM kernels for AVX-512F/BW without VNNI (the op picks them at run time when the CPU and
// OS support AVX-512): the Isa traits of qgemm_isa_avx512.h, then the shared kernel body from
// qgemm_kernels.h. This file alone gets these compiler flags (CMakeLists.txt).
#include "quant/qgemm_problem.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)  // the flags CMake gives this file on x86-64 builds
#include <immintrin.h>

namespace gemma4::quant::avx512 {

#include "quant/qgemm_isa_avx512.h"
#include "quant/qgemm_kernels.h"

}  // namespace gemma4::quant::avx512
#endif
