// Shared pieces of the MoE expert kernels (moe_experts_cpu.cpp, moe_experts_backward_cpu.cpp):
// the grouping of (token, slot) pairs by expert and work splitting.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include "common/checks.h"
#include "common/vec_utils.h"
#include "moe/moe_checks.h"
#include "moe/moe_gemm.h"

namespace gemma4::moe {

// The (token, slot) pairs grouped by expert: a stable counting sort of pair ids p = n*K + k by
// e = indices[n, k], so within an expert the tokens stay in ascending order.
// Every index is range-checked here, before any kernel reads memory with it.
struct Groups {
  std::vector<int64_t> offset;  // [E+1]: expert e owns sorted positions [offset[e], offset[e+1])
  std::vector<int64_t> pair;    // [N*K]: sorted position -> pair id n*K + k
};

inline Groups group_by_expert(const char* op, const at::Tensor& indices, int64_t E) {
  const int64_t P = indices.numel();
  const int64_t K = indices.size(1);
  const int64_t* idx = indices.data_ptr<int64_t>();
  Groups g;
  g.offset.assign(E + 1, 0);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t e = idx[p];
    TORCH_CHECK(e >= 0 && e < E, op, ": indices must be in [0, ", E, ") (the number of experts), got ", e,
                " at [", p / K, ", ", p % K, "]");
    ++g.offset[e + 1];
  }
  for (int64_t e = 0; e < E; ++e) g.offset[e + 1] += g.offset[e];
  g.pair.resize(P);
  std::vector<int64_t> fill(g.offset.begin(), g.offset.end() - 1);
  for (int64_t p = 0; p < P; ++p) g.pair[fill[idx[p]]++] = p;
  return g;
}

// Runs of whole experts [first, last) with at most max_pairs pairs each (a run holds at least one
// expert, so one very popular expert may exceed it). Bounds the scratch buffers of a call.
inline std::vector<std::pair<int64_t, int64_t>> expert_chunks(const Groups& g, int64_t max_pairs) {
  std::vector<std::pair<int64_t, int64_t>> chunks;
  const int64_t E = static_cast<int64_t>(g.offset.size()) - 1;
  int64_t first = 0;
  while (first < E) {
    int64_t last = first + 1;
    while (last < E && g.offset[last + 1] - g.offset[first] <= max_pairs) ++last;
    if (g.offset[last] > g.offset[first]) chunks.emplace_back(first, last);
    first = last;
  }
  return chunks;
}

// Part t of T of [0, n), boundaries rounded to multiples of `align` so vector tiles stay whole.
inline std::pair<int64_t, int64_t> split(int64_t t, int64_t T, int64_t n, int64_t align) {
  auto bound = [&](int64_t i) {
    if (i >= T) return n;
    const int64_t b = (n * i / T) / align * align;
    return std::min(b, n);
  };
  return {bound(t), bound(t + 1)};
}

// Runs fn(t, T) once for each t in [0, T), T = the intra-op thread count, on the pool's threads
// (inside another parallel region, or when fewer threads are granted, a thread runs several t in
// order).
template <typename Fn>
inline void for_each_thread(const Fn& fn) {
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) fn(t, T);
  });
}

// Row-major copy of a [rows, cols] tensor of T into Acc (x and grad_out widened once up front).
template <typename Acc, typename T>
inline void widen_rows(const T* src, Acc* dst, int64_t rows, int64_t cols) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b * cols; i < e * cols; ++i) dst[i] = static_cast<Acc>(src[i]);
  });
}

// Routing weights as Acc, whatever their dtype (fp32 or x's dtype).
template <typename Acc>
inline std::vector<Acc> weights_as_acc(const at::Tensor& weights) {
  std::vector<Acc> w(weights.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "moe_weights", [&] {
    const scalar_t* p = weights.data_ptr<scalar_t>();
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<Acc>(p[i]);
  });
  return w;
}

}  // namespace gemma4::moe
