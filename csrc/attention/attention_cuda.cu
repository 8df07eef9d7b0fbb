// gemma4::attention and gemma4::attention_backward on CUDA: checks (attention_checks.h, shared with the
// CPU kernels), then the kernel choice:
// * bf16/fp16 with head_dim 64, 128, 256 or 512, 16-byte aligned rows, and a GPU that gives a block
//   the shared memory the kernel asks for (sm_90: every head_dim; sm_80/86/89, with 163/99 KB per
//   block, fall back to the simple kernels for the larger ones): tensor cores, either the
//   split-KV decode kernel (cuda/flash_decode.cuh; up to cu::kDecodeRows query rows per KV head) or the
//   flash-attention kernels (cuda/flash_fwd.cuh; backward always cuda/flash_bwd.cuh);
// * otherwise (float32/float64, other head dims, unaligned rows) the warp-per-row-group kernels
//   (cuda/simple.cuh), which also split the keys when there are few query rows.
// Reference: python/gemma4/ops/reference.py::attention.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "attention/attention_checks.h"
#include "attention/cuda/args.h"
#include "common/cuda_launch.cuh"

namespace gemma4::attn {
namespace {

namespace cu = gemma4::attn::cuda;

cu::Args make_args(const AttentionProblem& p, const at::Tensor& out, const at::Tensor& lse) {
  cu::Args a;
  const at::Tensor &q = p.q, &k = p.k, &v = p.v;
  a.q = q.const_data_ptr(); a.qsB = q.stride(0); a.qsT = q.stride(1); a.qsH = q.stride(2);
  a.k = k.const_data_ptr(); a.ksB = k.stride(0); a.ksS = k.stride(1); a.ksH = k.stride(2);
  a.v = v.const_data_ptr(); a.vsB = v.stride(0); a.vsS = v.stride(1); a.vsH = v.stride(2);
  a.mask = nullptr; a.msB = a.msS = 0;
  if (p.key_mask.has_value()) {
    a.mask = p.key_mask->const_data_ptr<bool>(); a.msB = p.key_mask->stride(0); a.msS = p.key_mask->stride(1);
  }
  TORCH_CHECK(p.B * p.nH * p.T < (int64_t(1) << 31) && p.S < (int64_t(1) << 31),
              "gemma4::attention (CUDA): sizes beyond 2^31 rows are not supported");
  TORCH_CHECK(p.B * p.nKV < 65536 && p.nH < 65536, "gemma4::attention (CUDA): batch x KV heads (", p.B * p.nKV,
              ") and query heads (", p.nH, ") must be below 65536 (grid limits)");
  a.B = p.B; a.T = p.T; a.S = p.S; a.nH = p.nH; a.nKV = p.nKV; a.hd = p.hd;
  a.window = static_cast<int>(p.window);
  a.scale = p.scale;
  a.out = const_cast<void*>(out.const_data_ptr());
  a.lse = const_cast<void*>(lse.const_data_ptr());
  return a;
}

bool rows_aligned(const at::Tensor& t) {  // 16-byte aligned base and row strides (8 x 16-bit elements)
  if (!gemma4::cuda::aligned16(t.const_data_ptr())) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.stride(d) % 8 != 0) return false;
  return true;
}

size_t smem_per_block() {  // the most dynamic shared memory a block of the current device may opt into
  return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

cu::FlashSmem flash_smem(int64_t hd) {
  switch (hd) {
    case 64: return cu::flash_smem<64>();
    case 128: return cu::flash_smem<128>();
    case 256: return cu::flash_smem<256>();
    default: return cu::flash_smem<512>();
  }
}

enum class Kernel { flash, decode, simple };

// Which forward (backward = false) or backward kernel takes this problem: tensor cores need bf16/fp16,
// a head_dim with an instantiation, 16-byte aligned rows, and a GPU with enough shared memory per block.
Kernel pick_kernel(const AttentionProblem& p, std::initializer_list<const at::Tensor*> rows, bool backward) {
  if (p.dtype != at::kBFloat16 && p.dtype != at::kHalf) return Kernel::simple;
  if (p.hd != 64 && p.hd != 128 && p.hd != 256 && p.hd != 512) return Kernel::simple;
  for (const at::Tensor* t : rows)
    if (!rows_aligned(*t)) return Kernel::simple;
  const cu::FlashSmem need = flash_smem(p.hd);
  const size_t have = smem_per_block();
  if (backward) return need.bwd <= have ? Kernel::flash : Kernel::simple;
  if (p.T * (p.nH / p.nKV) <= cu::kDecodeRows) return need.decode <= have ? Kernel::decode : Kernel::simple;
  return need.fwd <= have ? Kernel::flash : Kernel::simple;
}

// Calls f.template operator()<T>() with the CUDA element type of dtype.
template <typename F>
void with_cuda_type(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kBFloat16: f.template operator()<__nv_bfloat16>(); break;
    case at::kHalf: f.template operator()<__half>(); break;
    case at::kFloat: f.template operator()<float>(); break;
    case at::kDouble: f.template operator()<double>(); break;
    default: TORCH_CHECK(false, "gemma4::attention (CUDA): unsupported dtype ", dtype);
  }
}

template <typename T, typename F>
void with_head_dim(int64_t hd, F&& f) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) {
    switch (hd) {
      case 64: f.template operator()<64>(); return;
      case 128: f.template operator()<128>(); return;
      case 256: f.template operator()<256>(); return;
      case 512: f.template operator()<512>(); return;
    }
  }
  TORCH_CHECK(false, "gemma4::attention (CUDA): no tensor-core kernel for head_dim ", hd);
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& key_mask, double scale,
                                                  int64_t window) {
  constexpr const char* op = "gemma4::attention";
  check_device(q, op, "q", c10::kCUDA);
  const AttentionProblem p = check_attention(op, q, k, v, key_mask, scale, window);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({p.B, p.T, p.nH, p.hd}, q.options());
  at::Tensor lse = at::empty({p.B, p.nH, p.T}, q.options().dtype(lse_dtype(p.dtype)));
  if (out.numel() == 0) return {out, lse};
  const cu::Args a = make_args(p, out, lse);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Kernel kernel = pick_kernel(p, {&p.q, &p.k, &p.v}, false);
  const int sms = gemma4::cuda::sm_count();
  with_cuda_type(p.dtype, [&]<typename T>() {
    if (kernel == Kernel::decode) {
      const int splits = cu::decode_splits(a, sms);
      at::Tensor ws;
      if (splits > 1) ws = at::empty({cu::decode_workspace_elems(a, splits)}, lse.options());
      float* wsp = splits > 1 ? ws.mutable_data_ptr<float>() : nullptr;
      with_head_dim<T>(p.hd, [&]<int HD>() { cu::flash_decode<T, HD>(a, splits, wsp, stream); });
      cu::simple_redo_fwd<T>(a, stream);  // rows a masked inf/NaN reached through 0 * inf
    } else if (kernel == Kernel::flash) {
      with_head_dim<T>(p.hd, [&]<int HD>() { cu::flash_fwd<T, HD>(a, stream); });
      cu::simple_redo_fwd<T>(a, stream);
    } else {
      const cu::SimplePlan plan = cu::simple_fwd_plan<T>(a, sms);
      at::Tensor ws;
      if (plan.workspace_elems > 0) ws = at::empty({plan.workspace_elems}, lse.options());
      cu::simple_fwd<T>(a, plan, ws.defined() ? ws.mutable_data_ptr() : nullptr, stream);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale, int64_t window) {
  constexpr const char* op = "gemma4::attention_backward";
  check_device(q, op, "q", c10::kCUDA);
  const AttentionProblem p = check_attention_backward(op, grad_out, q, k, v, out, lse, key_mask, scale, window);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor grad_q = at::empty({p.B, p.T, p.nH, p.hd}, q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (grad_q.numel() == 0 || grad_k.numel() == 0) {
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  at::Tensor delta = at::empty({p.B, p.nH, p.T}, p.lse.options());
  cu::BwdArgs x;
  x.f = make_args(p, p.out, p.lse);
  x.osB = p.out.stride(0); x.osT = p.out.stride(1); x.osH = p.out.stride(2);
  x.dout = p.grad_out.const_data_ptr();
  x.dsB = p.grad_out.stride(0); x.dsT = p.grad_out.stride(1); x.dsH = p.grad_out.stride(2);
  x.delta = delta.mutable_data_ptr();
  x.dq = grad_q.mutable_data_ptr();
  x.dk = grad_k.mutable_data_ptr();
  x.dv = grad_v.mutable_data_ptr();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool flash = pick_kernel(p, {&p.q, &p.k, &p.v, &p.out, &p.grad_out}, true) == Kernel::flash;
  with_cuda_type(p.dtype, [&]<typename T>() {
    cu::bwd_delta<T>(x, stream);
    if (flash) {
      with_head_dim<T>(p.hd, [&]<int HD>() { cu::flash_bwd<T, HD>(x, stream); });
      cu::simple_bwd<T>(x, stream, /*redo=*/true);  // rows a masked inf/NaN reached through 0 * inf
    } else {
      cu::simple_bwd<T>(x, stream);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_q, grad_k, grad_v};
}

}  // namespace
}  // namespace gemma4::attn

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
  m.impl("attention", &gemma4::attn::attention_cuda);
  m.impl("attention_backward", &gemma4::attn::attention_backward_cuda);
}
