// The quantized-GEMM kernels for AVX-512 with VNNI (the op picks them at run time when the CPU has
// AVX512_VNNI): the Isa traits of qgemm_isa_avx512.h, then the shared kernel body from qgemm_kernels.h,
// whose group-32 kernel then multiplies with vpdpwssd (int16 products added pairwise and accumulated in
// one instruction) and takes four x rows a pass; and the 16-row tiled layout's kernel (qgemm_tiled16.h), which
// needs vpdpbusd. This file alone gets these compiler flags (CMakeLists.txt).
#include "quant/qgemm_problem.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)  // the flags CMake gives this file on x86-64 builds
#include <immintrin.h>

#define GEMMA4_QGEMM_VNNI 1  // qgemm_g32.h: vpdpwssd dot products, four x rows a pass
namespace gemma4::quant::avx512vnni {

#include "quant/qgemm_isa_avx512.h"
#include "quant/qgemm_kernels.h"
#include "quant/qgemm_tiled16.h"

}  // namespace gemma4::quant::avx512vnni
#endif
