// Host launchers of the warp-per-row-group kernels (simple.cuh): pick the lane layout (DPL elements per
// lane, 16-byte vectors when every row is aligned), the split count, and launch. Instantiated once per
// dtype by simple_<dtype>.cu.
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>

#include "attention/cuda/simple.cuh"
#include "common/cuda_launch.cuh"

namespace gemma4::attn::cuda {

template <typename T>
struct Layout {
  int dpl, vec;
};

// Vector loads need every row start 16-byte aligned: base pointers and all strides in VEC elements.
template <typename T>
Layout<T> pick_layout(const Args& a, std::initializer_list<std::pair<const void*, std::initializer_list<int64_t>>>
                                         tensors) {
  constexpr int V = vec_elems<T>();
  bool vec = a.hd % V == 0;
  for (const auto& [p, strides] : tensors) {
    vec = vec && gemma4::cuda::aligned16(p);
    for (int64_t s : strides) vec = vec && s % V == 0;
  }
  const int per_lane = vec ? ((a.hd + 32 * V - 1) / (32 * V)) * V : (a.hd + 31) / 32;
  int dpl = 1;
  while (dpl < per_lane) dpl *= 2;
  return {dpl, vec ? V : 1};
}

template <typename T>
Layout<T> fwd_layout(const Args& a) {
  return pick_layout<T>(a, {{a.q, {a.qsB, a.qsT, a.qsH}}, {a.k, {a.ksB, a.ksS, a.ksH}},
                            {a.v, {a.vsB, a.vsS, a.vsH}}, {a.out, {}}});
}

// Calls f.template operator()<DPL, VEC>() for the layout (DPL a power of two <= 16).
template <typename T, typename F>
void with_layout(Layout<T> L, F&& f) {
  constexpr int V = vec_elems<T>();
  if (L.vec == V) {
    switch (L.dpl) {
      case 2: if constexpr (V <= 2) { f.template operator()<2, V>(); return; } break;
      case 4: if constexpr (V <= 4) { f.template operator()<4, V>(); return; } break;
      case 8: f.template operator()<8, V>(); return;
      case 16: f.template operator()<16, V>(); return;
    }
  } else {
    switch (L.dpl) {
      case 1: f.template operator()<1, 1>(); return;
      case 2: f.template operator()<2, 1>(); return;
      case 4: f.template operator()<4, 1>(); return;
      case 8: f.template operator()<8, 1>(); return;
      case 16: f.template operator()<16, 1>(); return;
    }
  }
  TORCH_CHECK(false, "gemma4::attention (CUDA): no kernel for ", L.dpl, " elements per lane");
}

constexpr int kSimpleWarps = 4;  // warps per block

template <typename T>
SimplePlan simple_fwd_plan(const Args& a, int num_sms) {
  const Layout<T> L = fwd_layout<T>(a);
  const int R = simple_rows<T>(L.dpl);
  const int64_t groups = (static_cast<int64_t>(a.T) * (a.nH / a.nKV) + R - 1) / R;
  const int64_t warps = groups * a.B * a.nKV;
  const int64_t want = static_cast<int64_t>(num_sms) * 16;  // enough warps in flight to stream the cache
  const int64_t keys = a.window > 0 ? std::min<int64_t>(a.S, a.window + a.T) : a.S;
  int64_t splits = warps >= want ? 1 : (want + warps - 1) / warps;
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, (keys + 127) / 128, 1024}));
  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
  return {R, static_cast<int>(splits), splits > 1 ? splits * BHT * (a.hd + 1) : 0};
}

template <typename T>
void simple_fwd(const Args& a, const SimplePlan& plan, void* workspace, cudaStream_t stream) {
  using A = acc<T>;
  const int64_t groups = (static_cast<int64_t>(a.T) * (a.nH / a.nKV) + plan.rows - 1) / plan.rows;
  with_layout<T>(fwd_layout<T>(a), [&]<int DPL, int VEC>() {
    const dim3 grid(groups, (plan.splits + kSimpleWarps - 1) / kSimpleWarps, a.B * a.nKV);
    simple_fwd_kernel<T, DPL, VEC><<<grid, 32 * kSimpleWarps, 0, stream>>>(a, plan.splits, static_cast<A*>(workspace));
  });
  if (plan.splits > 1) combine<T>(a, plan.splits, static_cast<const A*>(workspace), stream);
}

// After a tensor-core forward: recompute the rows whose output is non-finite (simple_fwd_kernel REDO).
template <typename T>
void simple_redo_fwd(const Args& a, cudaStream_t stream) {
  const int R = simple_rows<T>(fwd_layout<T>(a).dpl);
  const int64_t groups = (static_cast<int64_t>(a.T) * (a.nH / a.nKV) + R - 1) / R;
  with_layout<T>(fwd_layout<T>(a), [&]<int DPL, int VEC>() {
    simple_fwd_kernel<T, DPL, VEC, true><<<dim3(groups, 1, a.B * a.nKV), 32, 0, stream>>>(a, 1, nullptr);
  });
}

template <typename T>
Layout<T> bwd_layout(const BwdArgs& x) {
  const Args& a = x.f;
  return pick_layout<T>(a, {{a.q, {a.qsB, a.qsT, a.qsH}}, {a.k, {a.ksB, a.ksS, a.ksH}},
                            {a.v, {a.vsB, a.vsS, a.vsH}}, {a.out, {x.osB, x.osT, x.osH}},
                            {x.dout, {x.dsB, x.dsT, x.dsH}}, {x.dq, {}}, {x.dk, {}}, {x.dv, {}}});
}

template <typename T>
void bwd_delta(const BwdArgs& x, cudaStream_t stream) {
  const Args& a = x.f;
  const int64_t BHT = static_cast<int64_t>(a.B) * a.nH * a.T;
  with_layout<T>(bwd_layout<T>(x), [&]<int DPL, int VEC>() {
    delta_kernel<T, DPL, VEC><<<(BHT + kSimpleWarps - 1) / kSimpleWarps, 32 * kSimpleWarps, 0, stream>>>(x);
  });
}

// x.delta must hold bwd_delta's result. redo: after a tensor-core backward, recompute only the rows
// of grad_q, grad_k, grad_v that came out non-finite.
template <typename T>
void simple_bwd(const BwdArgs& x, cudaStream_t stream, bool redo) {
  const Args& a = x.f;
  const Layout<T> L = bwd_layout<T>(x);
  const int R = std::max(1, simple_rows<T>(L.dpl) / 2);
  with_layout<T>(L, [&]<int DPL, int VEC>() {
    const int64_t row_warps = (static_cast<int64_t>(a.T) * (a.nH / a.nKV) + R - 1) / R;
    const dim3 dq_grid((row_warps + kSimpleWarps - 1) / kSimpleWarps, 1, a.B * a.nKV);
    const int64_t key_warps = (static_cast<int64_t>(a.S) + R - 1) / R;
    const dim3 dkdv_grid((key_warps + kSimpleWarps - 1) / kSimpleWarps, 1, a.B * a.nKV);
    if (redo) {
      simple_dq_kernel<T, DPL, VEC, true><<<dq_grid, 32 * kSimpleWarps, 0, stream>>>(x);
      simple_dkdv_kernel<T, DPL, VEC, true><<<dkdv_grid, 32 * kSimpleWarps, 0, stream>>>(x);
    } else {
      simple_dq_kernel<T, DPL, VEC><<<dq_grid, 32 * kSimpleWarps, 0, stream>>>(x);
      simple_dkdv_kernel<T, DPL, VEC><<<dkdv_grid, 32 * kSimpleWarps, 0, stream>>>(x);
    }
  });
}

}  // namespace gemma4::attn::cuda

// One dtype's instantiations (in its own .cu file, so the files compile in parallel).
#define GEMMA4_SIMPLE_INSTANTIATE(T)                                                                  \
  template gemma4::attn::cuda::SimplePlan gemma4::attn::cuda::simple_fwd_plan<T>(                     \
      const gemma4::attn::cuda::Args&, int);                                                          \
  template void gemma4::attn::cuda::simple_fwd<T>(const gemma4::attn::cuda::Args&,                    \
                                                  const gemma4::attn::cuda::SimplePlan&, void*,       \
                                                  cudaStream_t);                                      \
  template void gemma4::attn::cuda::simple_redo_fwd<T>(const gemma4::attn::cuda::Args&, cudaStream_t); \
  template void gemma4::attn::cuda::simple_bwd<T>(const gemma4::attn::cuda::BwdArgs&, cudaStream_t, bool); \
  template void gemma4::attn::cuda::bwd_delta<T>(const gemma4::attn::cuda::BwdArgs&, cudaStream_t);
