// gemma4::moe_experts and gemma4::moe_experts_backward on CUDA; the CPU kernels' maths
// (moe_experts_cpu.cpp, moe_experts_backward_cpu.cpp), see there for the formulas. Reference:
// moe_experts in python/gemma4/ops/reference.py.
//
// Tokens are grouped by expert on the device (moe_cuda.cuh: one small kernel, no host sync), then
// every expert's pairs go through its GEMMs together, so each expert weight is read once per tile
// of up to 64 of its pairs -- at decode (a handful of tokens) that is once per call.
// Forward:  gu = x @ [G_e; U_e]^T  ->  h = act(g) * u  ->  y_pair = w * (h @ D_e^T)  ->  out[n] = sum_k y_pair
// Backward: gu (recomputed), dh_raw = grad_out @ D_e; per pair row: grad_weights, w h, dg | du;
//           grad_down_e = sum_s grad_out_s (w h)_s^T, grad_gate_up_e = sum_s (dg|du)_s x_s^T,
//           grad_x[n] = sum_k (dg|du) @ [G_e; U_e].
// Everything accumulates in fp32 (fp64 for fp64) and each output is rounded once; sums over the
// top_k slots of a token run in slot order and weight gradients in sorted (token) order, so results
// are deterministic.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "moe/moe_checks.h"
#include "common/cuda_launch.cuh"
#include "moe/moe_cuda.cuh"
#include "moe/moe_grouping.cuh"
#include "moe/moe_experts_tc.cuh"

namespace gemma4 {
namespace {

using cuda::acc_t;
using cuda::Pack;
using namespace moe_cuda;
static_assert(kBM == kTcBM, "the backward's tiles serve the SIMT and the tensor-core GEMMs");

// Up to this many tokens the forward takes the GEMV path (tiles of kGemvRows pairs per expert).
constexpr int64_t kGemvMaxTokens = 64;

using Shapes = moe::ExpertsProblem;

template <typename TA, typename TB, typename Acc, bool BNN>
void launch_pair_gemm(const PairGemm<TA, TB, Acc>& p, const GroupLayout& g) {
  const dim3 grid(static_cast<unsigned>(g.max_tiles), static_cast<unsigned>(cuda::ceil_div<int64_t>(p.N, kBN)));
  pair_gemm_kernel<TA, TB, Acc, BNN><<<grid, kGemmThreads, 0, cuda::stream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename TA, typename TB, typename Acc, bool Vec, bool Gated, Activation Act>
void launch_pair_gemv(const PairGemv<TA, TB, Acc>& p, const GroupLayout& g) {
  const dim3 grid(static_cast<unsigned>(g.max_tiles), static_cast<unsigned>(cuda::ceil_div<int64_t>(p.N, kGemvWarps)));
  pair_gemv_kernel<TA, TB, Acc, Vec, Gated, Act><<<grid, kGemvWarps * 32, 0, cuda::stream()>>>(p, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The tensor-core path: bf16/fp16, K's (H and Im) multiples of 8, 16-byte aligned operands.
template <typename T>
bool use_tensor_cores(const Shapes& s, const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down) {
  if constexpr (kTcType<T>) {
    return s.H % 8 == 0 && s.Im % 8 == 0 &&
           cuda::aligned16(x.const_data_ptr(), gate_up.const_data_ptr(), down.const_data_ptr());
  } else {
    return false;
  }
}

template <typename T>
void launch_tc_weight_grad(const TcWeightGrad<T>& p, const GroupLayout& g, int64_t E) {
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    const int64_t m_tiles = cuda::ceil_div<int64_t>(p.M, kTcBM);
    const dim3 grid(static_cast<unsigned>(E * m_tiles), static_cast<unsigned>(cuda::ceil_div<int64_t>(p.N, kTcBN)));
    weight_grad_tc_kernel<T><<<grid, kTcThreads, 0, cuda::stream()>>>(p, g, m_tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename TA, typename TB, typename TO, typename Acc>
void launch_weight_grad_gemm(const WeightGradGemm<TA, TB, TO>& p, const GroupLayout& g, int64_t E) {
  const int64_t m_tiles = cuda::ceil_div<int64_t>(p.M, kBM);
  const dim3 grid(static_cast<unsigned>(E * m_tiles), static_cast<unsigned>(cuda::ceil_div<int64_t>(p.N, kBN)));
  weight_grad_gemm_kernel<TA, TB, TO, Acc><<<grid, kGemmThreads, 0, cuda::stream()>>>(p, g, m_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// gu[s, 0:2Im] = [G_e; U_e] @ x[token(s)] for every sorted pair row s.
template <typename T, typename Acc>
at::Tensor gate_up_rows(const at::Tensor& x, const at::Tensor& gate_up, const Shapes& s, const Grouping& g) {
  at::Tensor gu = at::empty({s.N * s.K, 2 * s.Im}, x.options().dtype(c10::CppTypeToScalarType<Acc>::value));
  PairGemm<T, T, Acc> p{x.const_data_ptr<T>(), true, gate_up.const_data_ptr<T>(), 2 * s.Im * s.H, 2 * s.Im, s.H,
                        s.K, gu.mutable_data_ptr<Acc>(), false, nullptr};
  launch_pair_gemm<T, T, Acc, false>(p, g.layout);
  return gu;
}

at::Tensor weights_as_acc(const at::Tensor& weights, at::ScalarType acc) {
  return weights.scalar_type() == acc ? weights : weights.to(acc);
}

at::Tensor moe_experts_cuda(const at::Tensor& x_in, const at::Tensor& weights_in, const at::Tensor& indices_in,
                            const at::Tensor& gate_up_in, const at::Tensor& down_in, c10::string_view act_name) {
  constexpr const char* op = "gemma4::moe_experts";
  check_device(x_in, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Shapes s = moe::check_experts(op, x_in, weights_in, indices_in, gate_up_in, down_in, act_name);
  check_cuda_limits(op, s.E, s.N * s.K, "gate_up");
  const at::Tensor &x = s.x, &weights = s.weights, &indices = s.indices, &gate_up = s.gate_up, &down = s.down;
  const Activation act = s.act;
  const int64_t P = s.N * s.K;
  if (P == 0 || s.H == 0 || s.Im == 0) return at::zeros({s.N, s.H}, x.options());
  at::Tensor out;  // [N, H]
  GEMMA4_CUDA_DISPATCH_FLOATS(x.scalar_type(), "gemma4::moe_experts", [&] {
    using T = scalar_t;
    using Acc = acc_t<T>;
    const auto acc_type = c10::CppTypeToScalarType<Acc>::value;
    const at::Tensor w = weights_as_acc(weights, acc_type);
    if constexpr (kTcType<T>) {
      if (s.N > kGemvMaxTokens && use_tensor_cores<T>(s, x, gate_up, down)) {
        // Many tokens, bf16/fp16: grouped GEMMs on tensor cores.
        const Grouping g = group_pairs(indices, s.E, kTcBM);
        out = experts_forward_tc<T>({x, w, s.N, s.K, s.H, s.Im, act, g.layout},
                                    DenseB<T>{gate_up.const_data_ptr<T>(), 2 * s.Im * s.H},
                                    DenseB<T>{down.const_data_ptr<T>(), s.H * s.Im});
        return;
      }
    }
    at::Tensor y_pair = at::empty({P, s.H}, x.options().dtype(acc_type));  // w * down_e @ h, by pair id
    if (s.N <= kGemvMaxTokens) {
      // Few tokens: weight-streaming GEMVs, gate/up and the activation fused.
      const Grouping g = group_pairs(indices, s.E, kGemvRows);
      at::Tensor h = at::empty({P, s.Im}, x.options().dtype(acc_type));  // act(g) * u, by sorted row
      const bool vec = s.H % Pack<T>::N == 0 && s.Im % Pack<T>::N == 0 &&
                       cuda::aligned16(x.const_data_ptr(), gate_up.const_data_ptr(), down.const_data_ptr());
      GEMMA4_DISPATCH_ACTIVATION(act, Act, [&] {
        PairGemv<T, T, Acc> p1{x.const_data_ptr<T>(), true, gate_up.const_data_ptr<T>(), 2 * s.Im * s.H, s.Im, s.H,
                               s.K, h.mutable_data_ptr<Acc>(), false, nullptr};
        PairGemv<Acc, T, Acc> p2{h.const_data_ptr<Acc>(), false, down.const_data_ptr<T>(), s.H * s.Im, s.H, s.Im,
                                 s.K, y_pair.mutable_data_ptr<Acc>(), true, w.const_data_ptr<Acc>()};
        if (vec) {
          launch_pair_gemv<T, T, Acc, true, true, Act>(p1, g.layout);
          launch_pair_gemv<Acc, T, Acc, true, false, Act>(p2, g.layout);
        } else {
          launch_pair_gemv<T, T, Acc, false, true, Act>(p1, g.layout);
          launch_pair_gemv<Acc, T, Acc, false, false, Act>(p2, g.layout);
        }
      });
    } else {
      const Grouping g = group_pairs(indices, s.E, kBM);
      const at::Tensor gu = gate_up_rows<T, Acc>(x, gate_up, s, g);  // [P, 2Im]
      at::Tensor h = at::empty({P, s.Im}, x.options().dtype(acc_type));
      GEMMA4_DISPATCH_ACTIVATION(act, Act, [&] {
        gated_rows_kernel<Act, Acc, Acc><<<elementwise_blocks(P * s.Im), 256, 0, cuda::stream()>>>(
            gu.const_data_ptr<Acc>(), P, s.Im, h.mutable_data_ptr<Acc>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      PairGemm<Acc, T, Acc> pd{h.const_data_ptr<Acc>(), false, down.const_data_ptr<T>(), s.H * s.Im, s.H, s.Im,
                               s.K, y_pair.mutable_data_ptr<Acc>(), true, w.const_data_ptr<Acc>()};
      launch_pair_gemm<Acc, T, Acc, false>(pd, g.layout);
    }
    out = at::empty({s.N, s.H}, x.options());
    launch_sum_slots(y_pair.const_data_ptr<Acc>(), s.N, s.K, s.H, out.mutable_data_ptr<T>());
  });
  return out;
}

// The caller has checked the problem and check_cuda_limits.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> experts_backward(const Shapes& s) {
  const at::Tensor &x = s.x, &weights = s.weights, &indices = s.indices, &gate_up = s.gate_up, &down = s.down,
                   &grad_out = s.grad_out;
  const Activation act = s.act;
  const int64_t P = s.N * s.K;
  if (P == 0 || s.H == 0 || s.Im == 0) {  // nothing flows: every gradient is zero
    return {at::zeros_like(x), at::zeros_like(weights), at::zeros_like(gate_up), at::zeros_like(down)};
  }
  at::Tensor grad_x;
  at::Tensor grad_w = at::empty_like(weights);
  at::Tensor grad_gu = at::empty_like(gate_up), grad_dn = at::empty_like(down);
  GEMMA4_CUDA_DISPATCH_FLOATS(x.scalar_type(), "gemma4::moe_experts_backward", [&] {
    using T = scalar_t;
    using Acc = acc_t<T>;
    const auto acc_type = c10::CppTypeToScalarType<Acc>::value;
    const Grouping g = group_pairs(indices, s.E, kBM);  // kBM == kTcBM: both GEMM kinds read these tiles
    const at::Tensor w = weights_as_acc(weights, acc_type);
    if constexpr (kTcType<T>) {
      if (use_tensor_cores<T>(s, x, gate_up, down) && cuda::aligned16(grad_out.const_data_ptr())) {
        const TcBackward r = experts_backward_tc<T>({x, w, s.N, s.K, s.H, s.Im, act, g.layout}, grad_out, grad_w,
                                                    /*keep_hw=*/true,
                                                    DenseB<T>{gate_up.const_data_ptr<T>(), 2 * s.Im * s.H},
                                                    DenseB<T>{down.const_data_ptr<T>(), s.H * s.Im});
        grad_x = r.grad_x;
        // grad_down_e[c, j] = sum_s grad_out[token(s), c] * (w h)[s, j];  grad_gate_up_e[j, c] = sum_s (dg|du)[s, j] * x[token(s), c]
        launch_tc_weight_grad<T>({grad_out.const_data_ptr<T>(), true, r.hw.const_data_ptr<T>(), false, s.H, s.Im,
                                  s.K, grad_dn.mutable_data_ptr<T>()}, g.layout, s.E);
        launch_tc_weight_grad<T>({r.dgdu.const_data_ptr<T>(), false, x.const_data_ptr<T>(), true, 2 * s.Im, s.H,
                                  s.K, grad_gu.mutable_data_ptr<T>()}, g.layout, s.E);
        return;
      }
    }
    // SIMT GEMMs in Acc (the recomputed g | u still on tensor cores where only grad_out is misaligned).
    at::Tensor gu;  // g | u, then dg | du
    if constexpr (kTcType<T>) {
      if (use_tensor_cores<T>(s, x, gate_up, down)) {
        gu = at::empty({P, 2 * s.Im}, x.options().dtype(acc_type));
        launch_tc_gemm<T>(TcGemm<T>{x.const_data_ptr<T>(), true, {gate_up.const_data_ptr<T>(), 2 * s.Im * s.H},
                                    2 * s.Im, s.H, s.K, gu.mutable_data_ptr<float>(), false, nullptr}, g.layout);
      }
    }
    if (!gu.defined()) gu = gate_up_rows<T, Acc>(x, gate_up, s, g);
    // dh_raw[s, j] = sum_c grad_out[token(s), c] * down_e[c, j]
    at::Tensor dh = at::empty({P, s.Im}, x.options().dtype(acc_type));
    PairGemm<T, T, Acc> pdh{grad_out.const_data_ptr<T>(), true, down.const_data_ptr<T>(), s.H * s.Im, s.Im, s.H,
                            s.K, dh.mutable_data_ptr<Acc>(), false, nullptr};
    launch_pair_gemm<T, T, Acc, true>(pdh, g.layout);
    at::Tensor hw = at::empty({P, s.Im}, x.options().dtype(acc_type));  // w h
    launch_expert_grad_rows<T, Acc>(act, gu.mutable_data_ptr<Acc>(), dh.const_data_ptr<Acc>(), w.const_data_ptr<Acc>(),
                                    g.layout.sorted_pair, P, s.Im, hw.mutable_data_ptr<Acc>(), grad_w, nullptr,
                                    nullptr);
    WeightGradGemm<T, Acc, T> wd{grad_out.const_data_ptr<T>(), true, hw.const_data_ptr<Acc>(), false, s.H, s.Im,
                                 s.K, grad_dn.mutable_data_ptr<T>()};
    launch_weight_grad_gemm<T, Acc, T, Acc>(wd, g.layout, s.E);
    WeightGradGemm<Acc, T, T> wg{gu.const_data_ptr<Acc>(), false, x.const_data_ptr<T>(), true, 2 * s.Im, s.H, s.K,
                                 grad_gu.mutable_data_ptr<T>()};
    launch_weight_grad_gemm<Acc, T, T, Acc>(wg, g.layout, s.E);
    // grad_x[n] = sum_k (dg|du)[pair] @ [G_e; U_e]
    at::Tensor gx_pair = at::empty({P, s.H}, x.options().dtype(acc_type));
    PairGemm<Acc, T, Acc> px{gu.const_data_ptr<Acc>(), false, gate_up.const_data_ptr<T>(), 2 * s.Im * s.H, s.H,
                             2 * s.Im, s.K, gx_pair.mutable_data_ptr<Acc>(), true, nullptr};
    launch_pair_gemm<Acc, T, Acc, true>(px, g.layout);
    grad_x = at::empty_like(x);
    launch_sum_slots(gx_pair.const_data_ptr<Acc>(), s.N, s.K, s.H, grad_x.mutable_data_ptr<T>());
  });
  return {grad_x, grad_w, grad_gu, grad_dn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_experts_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
    const at::Tensor& gate_up, const at::Tensor& down, c10::string_view act_name) {
  constexpr const char* op = "gemma4::moe_experts_backward";
  check_device(x, op, "x", c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const Shapes s = moe::check_experts_backward(op, grad_out, x, weights, indices, gate_up, down, act_name);
  check_cuda_limits(op, s.E, s.N * s.K, "gate_up");
  return experts_backward(s);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("moe_experts", &moe_experts_cuda);
  m.impl("moe_experts_backward", &moe_experts_backward_cuda);
}

}  // namespace gemma4
