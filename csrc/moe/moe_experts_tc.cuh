// The many-token MoE experts on tensor cores (bf16 / fp16): the forward and the input gradients as sequences of
// moe_gemm_tc.cuh's grouped GEMMs over any B source -- the dense banks of gemma4::moe_experts
// (moe_experts_cuda.cu, DenseB) or the packed ones of gemma4::moe_experts_quant (moe_experts_quant_cuda.cu,
// moe_tc_packed_b.cuh's PackedB), which therefore rounds as moe_experts on its dequantized banks, bit for bit.
// The maths: moe_experts_cuda.cu's header. h and dg | du are rounded to T between the GEMMs (as transformers'
// bf16 computation rounds h); the GEMMs accumulate in fp32.
#pragma once
#include <ATen/ops/empty.h>

#include "common/cuda_launch.cuh"
#include "moe/moe_cuda.cuh"
#include "moe/moe_gemm_tc.cuh"
#include "moe/moe_grouping.cuh"

namespace gemma4::moe_cuda {

template <typename T>
constexpr bool kTcType = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// BKMajor: B_e read as [K, N] (n contiguous) instead of [N, K].
template <typename T, bool BKMajor = false, typename BSrc>
void launch_tc_gemm(const TcGemm<T, BSrc>& p, const GroupLayout& g) {
  const dim3 grid(static_cast<unsigned>(g.max_tiles), static_cast<unsigned>(cuda::ceil_div<int64_t>(p.N, kTcBN)));
  pair_gemm_tc_kernel<T, BKMajor, BSrc><<<grid, kTcThreads, 0, cuda::stream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One call's inputs: x [N, H] in T and 16-byte aligned, w [N, K] the routing weights in float32, and the pairs
// grouped by expert into tiles of kTcBM (group_pairs).
struct TcExperts {
  const at::Tensor& x;
  const at::Tensor& w;
  int64_t N, K, H, Im;
  Activation act;
  const GroupLayout& g;
};

// out [N, H] in T. gate_up: expert e's [2Im, H]; down: its [H, Im].
template <typename T, typename GateUp, typename Down>
at::Tensor experts_forward_tc(const TcExperts& s, const GateUp& gate_up, const Down& down) {
  const int64_t P = s.N * s.K;
  const at::TensorOptions f32 = s.x.options().dtype(at::kFloat);
  at::Tensor gu = at::empty({P, 2 * s.Im}, f32);  // [P, 2Im] by sorted row
  launch_tc_gemm<T>(TcGemm<T, GateUp>{s.x.const_data_ptr<T>(), true, gate_up, 2 * s.Im, s.H, s.K,
                                      gu.mutable_data_ptr<float>(), false, nullptr}, s.g);
  at::Tensor h = at::empty({P, s.Im}, s.x.options());  // [P, Im] act(g) * u rounded to T
  GEMMA4_DISPATCH_ACTIVATION(s.act, Act, [&] {
    gated_rows_kernel<Act, float, T><<<elementwise_blocks(P * s.Im), 256, 0, cuda::stream()>>>(
        gu.const_data_ptr<float>(), P, s.Im, h.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor y_pair = at::empty({P, s.H}, f32);  // [P, H] w * (h @ D_e^T) by pair id
  launch_tc_gemm<T>(TcGemm<T, Down>{h.const_data_ptr<T>(), false, down, s.H, s.Im, s.K,
                                    y_pair.mutable_data_ptr<float>(), true, s.w.const_data_ptr<float>()}, s.g);
  at::Tensor out = at::empty({s.N, s.H}, s.x.options());  // [N, H]
  launch_sum_slots(y_pair.const_data_ptr<float>(), s.N, s.K, s.H, out.mutable_data_ptr<T>());
  return out;
}

// The backward's tensor-core tensors: grad_x [N, H] in T; dg | du [P, 2Im] and, when asked for, w h [P, Im], both
// rounded to T by sorted row, for the weight gradients' GEMMs.
struct TcBackward {
  at::Tensor grad_x, dgdu, hw;
};

// grad_out [N, H] in T and 16-byte aligned; grad_w [N, K] (T or float32) is written.
template <typename T, typename GateUp, typename Down>
TcBackward experts_backward_tc(const TcExperts& s, const at::Tensor& grad_out, at::Tensor& grad_w, bool keep_hw,
                               const GateUp& gate_up, const Down& down) {
  const int64_t P = s.N * s.K;
  const at::TensorOptions f32 = s.x.options().dtype(at::kFloat);
  at::Tensor gu = at::empty({P, 2 * s.Im}, f32);  // g | u recomputed, then dg | du in fp32
  launch_tc_gemm<T>(TcGemm<T, GateUp>{s.x.const_data_ptr<T>(), true, gate_up, 2 * s.Im, s.H, s.K,
                                      gu.mutable_data_ptr<float>(), false, nullptr}, s.g);
  at::Tensor dh = at::empty({P, s.Im}, f32);  // dh_raw[s, j] = sum_c grad_out[token(s), c] * down_e[c, j]
  launch_tc_gemm<T, true>(TcGemm<T, Down>{grad_out.const_data_ptr<T>(), true, down, s.Im, s.H, s.K,
                                          dh.mutable_data_ptr<float>(), false, nullptr}, s.g);
  TcBackward r;
  r.dgdu = at::empty({P, 2 * s.Im}, s.x.options());
  if (keep_hw) r.hw = at::empty({P, s.Im}, s.x.options());
  launch_expert_grad_rows<T, float>(s.act, gu.mutable_data_ptr<float>(), dh.const_data_ptr<float>(),
                                    s.w.const_data_ptr<float>(), s.g.sorted_pair, P, s.Im, nullptr, grad_w,
                                    r.dgdu.mutable_data_ptr<T>(), keep_hw ? r.hw.mutable_data_ptr<T>() : nullptr);
  // grad_x[n] = sum_k (dg|du)[pair] @ [G_e; U_e]
  at::Tensor gx_pair = at::empty({P, s.H}, f32);  // [P, H] by pair id
  launch_tc_gemm<T, true>(TcGemm<T, GateUp>{r.dgdu.const_data_ptr<T>(), false, gate_up, s.H, 2 * s.Im, s.K,
                                            gx_pair.mutable_data_ptr<float>(), true, nullptr}, s.g);
  r.grad_x = at::empty({s.N, s.H}, s.x.options());
  launch_sum_slots(gx_pair.const_data_ptr<float>(), s.N, s.K, s.H, r.grad_x.mutable_data_ptr<T>());
  return r;
}

}  // namespace gemma4::moe_cuda
