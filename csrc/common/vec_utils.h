// Vector load/store helpers shared by the CPU kernels: VecIO<T> reads T elements (float, double,
// bfloat16, half) as lanes of Vectorized<acc_t<T>> and writes them back, rounding once (round to
// nearest even, like c10's conversions). Kernels are then written once over VecIO<T>::V and work
// for every dtype: fp32 and fp64 natively, bf16/fp16 widened to fp32 in registers.
// Also gemma4::parallel_for (at the end): at::parallel_for that still runs in parallel when this
// library is compiled without -fopenmp.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/checks.h"

namespace gemma4 {

// float / double: Vectorized<T> itself (8 / 4 lanes under AVX2).
template <typename T>
struct VecIO {
  using A = T;
  using V = at::vec::Vectorized<T>;
  static constexpr int N = V::size();
  static V load(const T* p) { return V::loadu(p); }
  // First n (< N) elements; the other lanes are zero, so sums over a tail need no masking.
  static V load(const T* p, int n) { return V::loadu(p, n); }
  static void store(T* p, const V& v) { v.store(p); }
  static void store(T* p, const V& v, int n) { v.store(p, n); }
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
  static V load(const T* p, int n) {
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
  static void store(T* p, const V& v, int n) {
    T buf[N];
    store(buf, v);
    std::memcpy(static_cast<void*>(p), buf, n * sizeof(T));
  }
};
template <>
struct VecIO<c10::BFloat16> : VecIO16<c10::BFloat16> {};
template <>
struct VecIO<c10::Half> : VecIO16<c10::Half> {};

// Sum of the lanes of v (once per row, so a plain loop is fine).
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

// ---- parallel_for ---------------------------------------------------------------------------
// at::parallel_for is a header template: with torch's OpenMP backend it is parallel only when the
// including file is compiled with -fopenmp (_OPENMP defined); otherwise it silently runs the whole
// range on the calling thread. Until the build adds OpenMP, gemma4::parallel_for opens the parallel
// region itself through libgomp's entry point GOMP_parallel -- the very runtime torch uses (libtorch
// links it, and the symbol is taken weakly, so a torch without it just runs serially) -- with
// at::parallel_for's semantics: at most get_num_threads() tasks of >= grain iterations, serial when
// nested, thread ids for at::get_thread_num(), the first exception rethrown on the caller.
// With -fopenmp (or torch's native backend) it is exactly at::parallel_for.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#define GEMMA4_OWN_OMP_REGION 1
extern "C" {
__attribute__((weak)) void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
__attribute__((weak)) int omp_get_thread_num(void);
__attribute__((weak)) int omp_get_num_threads(void);
}
#endif

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#if defined(GEMMA4_OWN_OMP_REGION)
  if (begin >= end) return;
  at::internal::lazy_init_num_threads();
  const int64_t n = end - begin;
  if (n <= grain || n == 1 || at::get_num_threads() <= 1 || at::in_parallel_region() || !GOMP_parallel ||
      !omp_get_thread_num || !omp_get_num_threads) {
    at::internal::ThreadIdGuard tid_guard(0);
    c10::ParallelGuard guard(true);
    f(begin, end);
    return;
  }
  struct Ctx {
    const F* f;
    int64_t begin, end, grain;
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
    std::exception_ptr error;
  } ctx{&f, begin, end, std::max<int64_t>(grain, 1)};
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), at::divup(n, ctx.grain));
  GOMP_parallel(
      [](void* data) {
        Ctx* c = static_cast<Ctx*>(data);
        // The runtime may grant fewer threads than asked: split by the threads actually running.
        const int64_t nthreads = std::min<int64_t>(omp_get_num_threads(), at::divup(c->end - c->begin, c->grain));
        const int64_t tid = omp_get_thread_num();
        const int64_t chunk = at::divup(c->end - c->begin, nthreads);
        const int64_t b = c->begin + tid * chunk;
        if (b >= c->end) return;
        try {
          at::internal::ThreadIdGuard tid_guard(static_cast<int>(tid));
          c10::ParallelGuard guard(true);
          (*c->f)(b, std::min(c->end, b + chunk));
        } catch (...) {
          if (!c->failed.test_and_set()) c->error = std::current_exception();
        }
      },
      &ctx, static_cast<unsigned>(tasks), 0);
  if (ctx.error) std::rethrow_exception(ctx.error);
#else
  at::parallel_for(begin, end, grain, f);
#endif
}

}  // namespace gemma4
