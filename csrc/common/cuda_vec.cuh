// Device-side vector I/O shared by the CUDA kernels: Pack<T> is 16 bytes of T (4 float, 2 double,
// 8 bfloat16/half) moved with one 128-bit load or store, widened to the accumulation type
// (float for fp32/bf16/fp16, double for fp64) in registers and rounded back once, to nearest even
// (c10's conversions, which use the hardware cvt instructions on sm_80+).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace gemma4::cuda {

// Accumulation type: double for double, float otherwise.
template <typename T> struct AccT { using type = float; };
template <> struct AccT<double> { using type = double; };
template <typename T> using acc_t = typename AccT<T>::type;

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// One 16-byte load from global memory (p must be 16-byte aligned).
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

// Widen a pack to the accumulation type / round an accumulator array back into a pack.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ void widen(const Pack<T>& p, A (&out)[Pack<T>::N]) {
#pragma unroll
  for (int i = 0; i < Pack<T>::N; ++i) out[i] = static_cast<A>(p.v[i]);
}
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ Pack<T> narrow(const A (&in)[Pack<T>::N]) {
  Pack<T> p;
#pragma unroll
  for (int i = 0; i < Pack<T>::N; ++i) p.v[i] = static_cast<T>(in[i]);
  return p;
}

}  // namespace gemma4::cuda
