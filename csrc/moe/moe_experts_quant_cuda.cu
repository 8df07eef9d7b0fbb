// gemma4::moe_experts_quant and its backward on CUDA.
//
// Forward, up to kGemv16BitMaxTokens tokens with bf16/fp16 x and kGemvMaxTokens with fp32 x (decode, small batches):
// the pairs grouped by expert on the device (moe_grouping.cuh), then the gate/up and down GEMVs over the packed
// weights (moe_quant_gemv.cuh) and the per-token sum over the slots: four launches, no host sync, so a decode step
// that contains it can be captured in a CUDA graph. Indices outside [0, E) trip a device-side assert there, as in
// gemma4::moe_experts (a host check would need the sync). Its roundings are the composed path's; its sums are not
// bit-equal to them.
//
// Forward above kGemv16BitMaxTokens with bf16/fp16 x (prefill): gemma4::moe_experts' grouped tensor-core GEMMs
// (moe_experts_tc.cuh) with the packed banks as their B operand (moe_tc_packed_b.cuh): each weight tile is
// dequantized into shared memory on the way, rounded once from the exact q * scale as plain PyTorch's
// dequant(W).to(dtype) rounds it, so the result equals gemma4::moe_experts on the dequantized banks bit for bit,
// without the banks ever existing in x's dtype (26B-A4B: 1.5 GB a layer). No host sync (a device-side assert for bad
// indices). A tensor off a 16-byte boundary is copied onto one first (aligned).
//
// Backward with bf16/fp16 x, at any token count: the same GEMMs' input gradients (the banks are frozen), equal to
// gemma4::moe_experts_backward's grad_x and grad_weights on the dequantized banks; no host sync either. Up to
// moe::kPreciseGradWeightsMaxPairs (token, slot) pairs (moe_experts_quant.h says why) the routing weights'
// gradients come from the GEMVs in fp32 instead (grad_weights_fp32).
//
// fp32 forwards above kGemvMaxTokens, a misaligned bank on the GEMVs' route, and the fp32 backward: a host loop
// over the experts composed of the CUDA ops (moe_experts_quant_composed.cpp): the pairs are grouped by expert on the
// device (bincount + stable argsort), the per-expert counts come to the host in one copy (the op's one
// synchronisation), then each chosen expert runs index_select, gemma4::qgemm on its gate_up slice,
// gemma4::gated_activation, gemma4::qgemm on its down slice and index_add_ into a float32 accumulator: about six
// launches per chosen expert, so that each expert's tokens take qgemm's tensor-core paths. Same maths as the CPU
// kernel (moe_experts_quant_cpu.cpp); the results differ from it by the CUDA kernels' rounding only.
#include <torch/library.h>

#include <c10/cuda/CUDAGuard.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "moe/moe_experts_quant.h"
#include "moe/moe_experts_tc.cuh"
#include "moe/moe_grouping.cuh"
#include "moe/moe_quant_gemv.cuh"
#include "moe/moe_tc_packed_b.cuh"
#include "quant/qgemm_cuda_dispatch.h"
#include "quant/quant_checks.h"  // qweight_bits

namespace gemma4 {
namespace {

constexpr const char* kOp = "gemma4::moe_experts_quant";

// Up to kGemv16BitMaxTokens tokens a bf16/fp16 forward takes the grouped GEMVs, above them the packed banks'
// grouped GEMMs. Measured on a 26B-A4B int4 g32 bank, bf16 x (H100, dev/quant/moe_gemv_threshold.patch,
// dev/device_runs/2026-12-05g-h100-moe-packed-tc.log), ms at 16 / 32 / 64 / 96 / 128 / 192 tokens: the GEMVs 0.45 /
// 0.71 / 1.10 / 1.54 / 1.99 / 2.89, the packed GEMMs 0.62 / 0.82 / 0.92 / 0.94 / 0.95 / 0.96; on the H200
// (2026-12-05h log) at 32 / 40 / 48 tokens the GEMVs 0.79 / 0.90 / 0.97, the GEMMs 0.85 / 0.88 / 0.89.
// fp32 x takes the GEMVs up to kGemvMaxTokens (it has no tensor-core route: above, the composed path, whose
// per-expert qgemm calls reach cuBLAS on dequantized weights).
constexpr int64_t kGemv16BitMaxTokens = 40;
constexpr int64_t kGemvMaxTokens = 128;

// The grouped GEMVs' conditions: few tokens, experts within the grouping kernel's counters, and x and both packed
// banks on 16-byte boundaries (their vector loads; a sliced bank may not be, and the caller copies a sliced x).
bool gemv_fits(const moe::QuantExpertsProblem& p) {
  return p.N <= kGemvMaxTokens && p.E <= moe_cuda::kMaxExperts &&
         cuda::aligned16(p.x.const_data_ptr(), p.gate_up_qweight.const_data_ptr(), p.down_qweight.const_data_ptr());
}

// One bank's arguments: qweight [E, rows, K/2 | K], scales [E, rows, G].
moe_cuda::QuantPairGemv bank_args(const at::Tensor& qweight, const at::Tensor& scales, int64_t K, int rows) {
  moe_cuda::QuantPairGemv a{};
  a.qw = static_cast<const uint8_t*>(qweight.const_data_ptr());
  a.scales = scales.const_data_ptr();
  a.expert_bytes = qweight.stride(0);
  a.row_bytes = qweight.stride(1);
  a.rows = rows;
  a.K = static_cast<int>(K);
  a.G = static_cast<int>(scales.size(2));
  a.runs_per_scale = static_cast<int>(K / scales.size(2) / 32);
  return a;
}

template <typename T, bool GATED>
void launch_bank(const moe_cuda::QuantPairGemv& a, int bits, at::ScalarType scale_type,
                 const moe_cuda::GroupLayout& g) {
  const int blocks_y = cuda::ceil_div(a.rows, moe_cuda::kQWarps);  // a warp per output row
  const dim3 grid(static_cast<unsigned>(g.max_tiles), static_cast<unsigned>(blocks_y));
  quant_cuda::dispatch_bits(bits, [&]<int BITS>() {
    quant_cuda::dispatch_scale(scale_type, [&]<typename S>() {
      moe_cuda::quant_pair_gemv_kernel<T, S, BITS, GATED><<<grid, moe_cuda::kQWarps * 32, 0, cuda::stream()>>>(a, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// Each pair's expert output before the routed sum, y_pair [P, H] fp32 by pair id: w * T(...) with the forward's
// roundings in T (x's dtype; x [N, H] in T, w [N, K] fp32).
template <typename T>
at::Tensor pair_outputs(const moe::QuantExpertsProblem& p, const at::Tensor& x, const at::Tensor& w,
                        const moe_cuda::GroupLayout& g) {
  const int64_t P = p.N * p.K;
  at::Tensor h = at::empty({P, p.Im}, x.options());                        // [P, Im] by sorted position, T
  at::Tensor y_pair = at::empty({P, p.H}, x.options().dtype(at::kFloat));  // [P, H] by pair id
  moe_cuda::QuantPairGemv gu = bank_args(p.gate_up_qweight, p.gate_up_scales, p.H, static_cast<int>(p.Im));
  gu.a = x.const_data_ptr();
  gu.a_by_token = true;
  gu.slots = static_cast<int>(p.K);
  gu.out = h.mutable_data_ptr();
  gu.act = p.act;
  launch_bank<T, true>(gu, quant::qweight_bits(p.gate_up_qweight, kOp), p.gate_up_scales.scalar_type(), g);
  moe_cuda::QuantPairGemv dn = bank_args(p.down_qweight, p.down_scales, p.Im, static_cast<int>(p.H));
  dn.a = h.const_data_ptr();
  dn.a_by_token = false;
  dn.slots = static_cast<int>(p.K);
  dn.out = y_pair.mutable_data_ptr();
  dn.weights = w.const_data_ptr<float>();
  launch_bank<T, false>(dn, quant::qweight_bits(p.down_qweight, kOp), p.down_scales.scalar_type(), g);
  return y_pair;
}

template <typename T>
at::Tensor forward_gemv(const moe::QuantExpertsProblem& p) {
  const moe_cuda::Grouping grouping = moe_cuda::group_pairs(p.indices, p.E, moe_cuda::kQRows);
  const at::Tensor y_pair = pair_outputs<T>(p, p.x, p.weights.to(at::kFloat), grouping.layout);  // [P, H]
  at::Tensor out = at::empty({p.N, p.H}, p.x.options());                                         // [N, H]
  moe_cuda::launch_sum_slots(y_pair.const_data_ptr<float>(), p.N, p.K, p.H, out.mutable_data_ptr<T>());
  return out;
}

// grad_weights [N, K] in float32 from the exact weights, as the composed backward computes it
// (moe_experts_quant_composed.cpp): <grad_out[n], y> with y the fp32 GEMVs' output on x in fp32 and unit routing
// weights. Both banks 16-byte aligned (the GEMVs' loads); no host sync.
at::Tensor grad_weights_fp32(const moe::QuantExpertsProblem& p) {
  const moe_cuda::Grouping grouping = moe_cuda::group_pairs(p.indices, p.E, moe_cuda::kQRows);
  const at::Tensor x = p.x.to(at::kFloat);                                    // [N, H], a fresh aligned copy
  const at::Tensor ones = at::ones({p.N, p.K}, x.options());                  // [N, K]
  const at::Tensor y = pair_outputs<float>(p, x, ones, grouping.layout);      // [P, H]
  const at::Tensor go = p.grad_out.to(at::kFloat).unsqueeze(1);               // [N, 1, H]
  return y.view({p.N, p.K, p.H}).mul_(go).sum(2).to(p.weights.scalar_type());  // [N, K]
}

// The problem with x and grad_out (and, with banks, both banks) on 16-byte boundaries, as the GEMMs' and GEMVs'
// vector loads need: a tensor off one (a slice of a larger buffer) is copied onto one.
moe::QuantExpertsProblem aligned(moe::QuantExpertsProblem p, bool banks = true) {
  const auto align = [](at::Tensor& t) {
    if (t.defined() && !cuda::aligned16(t.const_data_ptr())) t = t.clone();
  };
  align(p.x), align(p.grad_out);
  if (banks) align(p.gate_up_qweight), align(p.down_qweight);
  return p;
}

// A bank [E, rows, len/2 | len] (16-byte aligned) as the tensor-core GEMMs' B source.
template <typename T, int BITS>
moe_cuda::PackedB<T, BITS> packed_bank(const at::Tensor& qweight, const at::Tensor& scales, int64_t len) {
  using moe_cuda::ScaleKind;
  const at::ScalarType st = scales.scalar_type();
  const ScaleKind kind = st == at::kFloat      ? ScaleKind::Float
                         : st == at::kBFloat16 ? ScaleKind::BFloat16
                                               : ScaleKind::Half;
  const int G = static_cast<int>(scales.size(2));
  return {static_cast<const uint8_t*>(qweight.const_data_ptr()), scales.const_data_ptr(), kind, qweight.size(1), len,
          G, static_cast<int>(len / G)};
}

// f(gate_up source, down source) with both banks' formats as types; p aligned.
template <typename T, typename F>
void with_packed_banks(const moe::QuantExpertsProblem& p, F&& f) {
  const at::Tensor &gate_up = p.gate_up_qweight, &down = p.down_qweight;
  quant_cuda::dispatch_bits(quant::qweight_bits(gate_up, kOp), [&]<int GB>() {
    quant_cuda::dispatch_bits(quant::qweight_bits(down, kOp), [&]<int DB>() {
      f(packed_bank<T, GB>(gate_up, p.gate_up_scales, p.H), packed_bank<T, DB>(down, p.down_scales, p.Im));
    });
  });
}

// p aligned.
template <typename T>
at::Tensor forward_tc(const moe::QuantExpertsProblem& p) {
  const at::Tensor &x = p.x, w = p.weights.to(at::kFloat);  // [N, H], [N, K]
  const moe_cuda::Grouping g = moe_cuda::group_pairs(p.indices, p.E, moe_cuda::kTcBM);
  at::Tensor out;
  with_packed_banks<T>(p, [&](const auto& gate_up, const auto& down) {
    out = moe_cuda::experts_forward_tc<T>({x, w, p.N, p.K, p.H, p.Im, p.act, g.layout}, gate_up, down);
  });
  return out;
}

// (grad_x, grad_weights) on the packed banks' grouped GEMMs; p aligned.
template <typename T>
std::tuple<at::Tensor, at::Tensor> backward_tc(const moe::QuantExpertsProblem& p) {
  if (p.N * p.K == 0) return {at::zeros_like(p.x), at::zeros_like(p.weights)};  // nothing flows
  const at::Tensor &x = p.x, &grad_out = p.grad_out, w = p.weights.to(at::kFloat);
  const moe_cuda::Grouping g = moe_cuda::group_pairs(p.indices, p.E, moe_cuda::kTcBM);
  at::Tensor grad_w = at::empty_like(p.weights);  // [N, K] in weights' dtype
  at::Tensor grad_x;
  with_packed_banks<T>(p, [&](const auto& gate_up, const auto& down) {
    grad_x = moe_cuda::experts_backward_tc<T>({x, w, p.N, p.K, p.H, p.Im, p.act, g.layout}, grad_out, grad_w,
                                              /*keep_hw=*/false, gate_up, down).grad_x;
  });
  return {grad_x, grad_w};
}

at::Tensor moe_experts_quant_cuda(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
                                  const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales,
                                  const at::Tensor& down_qweight, const at::Tensor& down_scales,
                                  c10::string_view activation) {
  check_device(x, kOp, "x", c10::kCUDA);
  const moe::QuantExpertsProblem p = moe::check_experts_quant(kOp, x, weights, indices, gate_up_qweight,
                                                              gate_up_scales, down_qweight, down_scales, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  if (p.N * p.K == 0) return at::zeros({p.N, p.H}, x.options());  // no pairs: no grid to launch, a sum of nothing
  if (p.N > kGemv16BitMaxTokens && p.dtype != at::kFloat && moe_cuda::within_cuda_limits(p.E, p.N * p.K)) {
    const moe::QuantExpertsProblem a = aligned(p);
    return p.dtype == at::kBFloat16 ? forward_tc<c10::BFloat16>(a) : forward_tc<c10::Half>(a);
  }
  // x off a 16-byte boundary (a slice) is copied onto one: a few tokens' bytes. A sliced bank would be a copy of up
  // to 1.5 GB a call, so that one takes the composed path.
  const moe::QuantExpertsProblem q = aligned(p, /*banks=*/false);
  if (!gemv_fits(q)) return moe::experts_quant_forward_composed(kOp, q);
  if (x.scalar_type() == at::kBFloat16) return forward_gemv<c10::BFloat16>(q);
  if (x.scalar_type() == at::kHalf) return forward_gemv<c10::Half>(q);
  return forward_gemv<float>(q);
}

std::tuple<at::Tensor, at::Tensor> moe_experts_quant_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& indices,
    const at::Tensor& gate_up_qweight, const at::Tensor& gate_up_scales, const at::Tensor& down_qweight,
    const at::Tensor& down_scales, c10::string_view activation) {
  constexpr const char* op = "gemma4::moe_experts_quant_backward";
  check_device(x, op, "x", c10::kCUDA);
  const moe::QuantExpertsProblem p = moe::check_experts_quant_backward(
      op, grad_out, x, weights, indices, gate_up_qweight, gate_up_scales, down_qweight, down_scales, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  if (p.dtype != at::kFloat && moe_cuda::within_cuda_limits(p.E, p.N * p.K)) {
    const moe::QuantExpertsProblem a = aligned(p);
    auto [grad_x, grad_w] = p.dtype == at::kBFloat16 ? backward_tc<c10::BFloat16>(a) : backward_tc<c10::Half>(a);
    if (p.N * p.K > 0 && p.N * p.K <= moe::kPreciseGradWeightsMaxPairs) grad_w = grad_weights_fp32(a);
    return {grad_x, grad_w};
  }
  return moe::experts_quant_backward_composed(op, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("moe_experts_quant", &moe_experts_quant_cuda);
  m.impl("moe_experts_quant_backward", &moe_experts_quant_backward_cuda);
}

}  // namespace gemma4
