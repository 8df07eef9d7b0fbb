// The CPU kernels' vector toolkit:
// * VecIO<T>: loads T elements (float, double, bfloat16, half) as the lanes of one
//   Vectorized<acc_t<T>> and stores them back, rounding once (round to nearest even, like c10's
//   conversions). Kernels are written once over VecIO<T>::V and work for every dtype: fp32 and fp64
//   natively, bf16/fp16 widened to fp32 in registers.
// * hsum: the sum of a vector's lanes.
// * row_grain: rows per at::parallel_for task.
// Parallel loops are at::parallel_for; the build compiles this library with torch's OpenMP flags
// (CMakeLists.txt), without which at::parallel_for would silently run on one thread.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ATen/ATen.h>  // the CPU kernels' tensor functions (at::empty_like, ...)
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/checks.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "torch runs at::parallel_for on OpenMP: compile the gemma4 kernels with OpenMP (-fopenmp), see CMakeLists.txt"
#endif

namespace gemma4 {

// float / double: Vectorized<T> itself (8 / 4 lanes under AVX2).
template <typename T>
struct VecIO {
  using A = T;
  using V = at::vec::Vectorized<T>;
  static constexpr int N = V::size();
  static V load(const T* p) { return V::loadu(p); }
  // First n (< N) elements; the other lanes are zero, so sums over a tail need no masking.
  static V load(const T* p, int64_t n) { return V::loadu(p, static_cast<int>(n)); }
  static void store(T* p, const V& v) { v.store(p); }
  static void store(T* p, const V& v, int64_t n) { v.store(p, static_cast<int>(n)); }
};

// bfloat16 / half: N = 8 elements widened to one Vectorized<float>.
template <typename T>
struct VecIO16 {
  using A = float;
  using V = at::vec::Vectorized<float>;
  static constexpr int N = V::size();
  static V load(const T* p) {
#if defined(CPU_CAPABILITY_AVX2)
    __m256 o;
    at::vec::cvt_to_fp32<T>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), o);
    return V(o);
#else
    float buf[N];
    for (int i = 0; i < N; ++i) buf[i] = static_cast<float>(p[i]);
    return V::loadu(buf);
#endif
  }
  static V load(const T* p, int64_t n) {
    T buf[N];
    std::memset(static_cast<void*>(buf), 0, sizeof(buf));  // all-zero bits are +0 in bf16 and fp16
    std::memcpy(static_cast<void*>(buf), p, n * sizeof(T));
    return load(buf);
  }
  static void store(T* p, const V& v) {
#if defined(CPU_CAPABILITY_AVX2)
    __m128i r;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      r = at::vec::cvtfp32_bf16(__m256(v));  // round to nearest even, NaN stays NaN
    } else {
      r = at::vec::cvtfp32_fp16(__m256(v));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), r);
#else
    float buf[N];
    v.store(buf);
    for (int i = 0; i < N; ++i) p[i] = static_cast<T>(buf[i]);
#endif
  }
  static void store(T* p, const V& v, int64_t n) {
    T buf[N];
    store(buf, v);
    std::memcpy(static_cast<void*>(p), buf, n * sizeof(T));
  }
};
template <>
struct VecIO<c10::BFloat16> : VecIO16<c10::BFloat16> {};
template <>
struct VecIO<c10::Half> : VecIO16<c10::Half> {};

// Sum of the lanes of v (once per row or tile, so a plain loop is fine).
template <typename A>
inline A hsum(const at::vec::Vectorized<A>& v) {
  A buf[at::vec::Vectorized<A>::size()];
  v.store(buf);
  A s = 0;
  for (int i = 0; i < at::vec::Vectorized<A>::size(); ++i) s += buf[i];
  return s;
}

// Rows per at::parallel_for task so that a task touches about `elems` elements: short rows are
// batched (thread start-up costs more than one 256-wide row), long rows go one per task.
inline int64_t row_grain(int64_t row_elems, int64_t elems = 16384) {
  return std::max<int64_t>(1, elems / std::max<int64_t>(1, row_elems));
}

}  // namespace gemma4
