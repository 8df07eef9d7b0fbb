// gemma4::qgemm on CUDA: y = x @ dequant(qweight, scales)^T (+ bias), weight-only int4/int8. Same checks
// as the CPU op (quant_checks.h); reference: gemma4.ops.reference.qgemm; layout: qgemm_problem.h.
//
// Two paths, by M = the rows of x:
//  * M <= kGemvMaxRows: a weight-streaming GEMV on tensor cores (device helpers and the fragment order in
//    qgemm_cuda.cuh). A small kernel first writes x in the MMA's fragment order (bf16/fp16 x; fp32 x takes
//    the other path), zero-padded to 8, 16 or 32 rows. Then each warp owns 32 weight rows (two 16-row tiles)
//    over a slice of K: per 32-byte chunk of a row each lane issues one 8-byte load (2-4 chunks ahead),
//    converts the levels exactly to bf16/fp16, and multiplies all M rows with mma.sync, fp32 accumulation;
//    each 32-weight run's sum is scaled in fp32. A block's warps take consecutive K slices of the same rows
//    and are added in warp order through shared memory: deterministic, one launch, no workspace. The weights
//    are read once for all M rows, so M = 1..32 costs about one pass over them.
//  * larger M, and fp32 x at any M: the weight is dequantized into an [N, K] workspace in x's dtype (each value rounded once from
//    the exact q * scale, as plain PyTorch's dequant(W).to(dtype) does) and at::linear multiplies (cuBLAS;
//    fp32 follows torch's allow_tf32 setting like torch.matmul).
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>

#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"
#include "quant/qgemm_cuda.cuh"
#include "quant/quant_checks.h"

namespace gemma4::quant {
namespace {

using namespace quant_cuda;

// Up to this many activation rows the GEMV runs (MMA tiles of 8 rows: 1, 2 or 4 of them); above, dequantize
// + cuBLAS. The GEMV reads the weights once whatever M, so it wins while its MMAs hide under the weight
// reads; benchmarks/gpu/bench_qgemm_gpu.py times both sides of the switch (M = 32 vs 64).
constexpr int64_t kGemvMaxRows = 32;
constexpr int kRowTiles = 2;     // 16-row MMA tiles per warp: 32 weight rows share each activation load
// Chunks loaded ahead: 2 x 4 independent 8-byte loads in flight per lane (int4: 128 weights per row; int8
// takes 4 chunks, as many bytes). Fewer with 4 row tiles of x: more spills registers (ptxas -v), each
// chunk's scales being held too.
template <int BITS, int NT>
constexpr int kUnroll = BITS == 4 ? 2 : (NT == 4 ? 2 : 4);
constexpr int kMaxWarps = 16;    // K slices (warps) per block
constexpr int kWarpsPerSm = 24;  // resident warps wanted: enough loads in flight to cover HBM latency
constexpr int kReduceSmem = 48 * 1024;  // the warps' partial sums, within the default shared-memory limit

struct GemvArgs {
  const uint8_t* qw;   // [N, K/2] (int4) or [N, K] (int8)
  const void* scales;  // [N, G] in S
  const uint4* xp;     // x in fragment order: [runs][NT][32 lanes] x 16 bytes
  const void* bias;    // [N] in T, or nullptr
  void* y;             // [M, N] in T
  int M, N;
  int64_t K;
  int G;      // scales per row
  int group;  // weights per scale
  int runs;   // K / 32
  int chunks;           // 32-byte chunks per row: ceil(runs / 2) for int4, runs for int8
  int chunks_per_warp;  // of one K slice
};

// x [M, K] -> xp in fragment order (qgemm_cuda.cuh): one thread per (run, 8-row tile, lane), 8 values
// in 16 bytes (bf16/fp16 x as it is: exact).
template <typename T, typename MT, int BITS>
__global__ void qgemv_prep_kernel(const T* __restrict__ x, uint4* __restrict__ xp, int M, int64_t K, int runs,
                                  int NT) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(runs) * NT * 32) return;
  const int lane = i % 32, nt = (i / 32) % NT;
  const int64_t run = i / (32 * NT);
  const int m = nt * 8 + lane / 4, t = lane % 4;
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = m < M ? static_cast<float>(x[m * K + run * 32 + run_offset<BITS>(t, j)]) : 0.0f;
  uint32_t o[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if constexpr (std::is_same_v<MT, __nv_bfloat16>) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * q], v[2 * q + 1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __half2 h = __floats2half2_rn(v[2 * q], v[2 * q + 1]);
      o[q] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  xp[(run * NT + nt) * 32 + lane] = make_uint4(o[0], o[1], o[2], o[3]);
}

template <typename MT, typename S, int BITS, int NT, typename T>
__global__ void __launch_bounds__(kMaxWarps * 32) qgemv_kernel(const GemvArgs a) {
  constexpr int RT = kRowTiles, U = kUnroll<BITS, NT>;
  constexpr int RPC = BITS == 4 ? 2 : 1;  // runs per 32-byte chunk
  constexpr int E = RT * NT * 4;          // accumulators per lane
  extern __shared__ float red[];          // [warps][E][32]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t row_bytes = BITS == 4 ? a.K / 2 : a.K;
  const int n0 = blockIdx.x * 16 * RT;
  const uint8_t* wrow[RT][2];  // this lane's 8 bytes of chunk 0 of rows g and g + 8 of each tile
  const S* srow[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = min(n0 + rt * 16 + h * 8 + g, a.N - 1);  // rows past N compute junk, never stored
      wrow[rt][h] = a.qw + n * row_bytes + 8 * t;
      srow[rt][h] = static_cast<const S*>(a.scales) + n * a.G;
    }
  const int c0 = warp * a.chunks_per_warp, c1 = min(a.chunks, c0 + a.chunks_per_warp);

  float acc[RT][NT][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[rt][nt][j] = 0.0f;

  for (int c = c0; c < c1; c += U) {
    // All loads of U chunks first (weights, then their scales), so they are in flight together.
    uint2 wv[U][RT][2];
    float sv[U][RT][2][RPC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // int4 with an odd number of runs: the last chunk's second run does not exist (lanes 2, 3)
          const bool has = BITS == 8 || t < 2 || 2 * cu + 1 < a.runs;
          wv[u][rt][h] = has ? load_stream8(wrow[rt][h] + int64_t(cu) * 32) : make_uint2(0, 0);
#pragma unroll
          for (int r = 0; r < RPC; ++r) {
            const int run = min(cu * RPC + r, a.runs - 1);
            sv[u][rt][h][r] = scale_to_float(__ldg(srow[rt][h] + run * 32 / a.group));
          }
        }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int cu = c + u;
      if (cu >= c1) break;
      uint32_t wr[RT][2][RPC][2];  // per run: the lane's weight words (int4: one, int8: two)
#pragma unroll
      for (int rt = 0; rt < RT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (BITS == 4) {
            exchange_int4(wv[u][rt][h], t, wr[rt][h][0][0], wr[rt][h][RPC - 1][0]);
            wr[rt][h][0][1] = wr[rt][h][RPC - 1][1] = 0;
          } else {
            wr[rt][h][0][0] = wv[u][rt][h].x;
            wr[rt][h][0][1] = wv[u][rt][h].y;
          }
        }
#pragma unroll
      for (int r = 0; r < RPC; ++r) {
        const int run = cu * RPC + r;
        if (run >= a.runs) break;
        // A fragments of the run's two k16 steps for both tiles: {row g, row g+8} x {slots 2t.., 2t+8..}
        uint32_t a0[RT][4], a1[RT][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          const uint32_t* w0 = wr[rt][0][r];  // row g
          const uint32_t* w1 = wr[rt][1][r];  // row g + 8
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            uint32_t(&af)[4] = s == 0 ? a0[rt] : a1[rt];
            af[0] = weight_pair<MT, BITS>(w0[0], w0[1], 2 * s);
            af[1] = weight_pair<MT, BITS>(w1[0], w1[1], 2 * s);
            af[2] = weight_pair<MT, BITS>(w0[0], w0[1], 2 * s + 1);
            af[3] = weight_pair<MT, BITS>(w1[0], w1[1], 2 * s + 1);
          }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4 xb = __ldg(a.xp + (int64_t(run) * NT + nt) * 32 + lane);  // this 8-row tile's B fragments
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // the run's exact-product sums, then scaled once
            mma16816<MT>(d, a0[rt], xb.x, xb.y);
            mma16816<MT>(d, a1[rt], xb.z, xb.w);
            acc[rt][nt][0] = fmaf(sv[u][rt][0][r], d[0], acc[rt][nt][0]);
            acc[rt][nt][1] = fmaf(sv[u][rt][0][r], d[1], acc[rt][nt][1]);
            acc[rt][nt][2] = fmaf(sv[u][rt][1][r], d[2], acc[rt][nt][2]);
            acc[rt][nt][3] = fmaf(sv[u][rt][1][r], d[3], acc[rt][nt][3]);
          }
        }
      }
    }
  }

  // The K slices' partial sums, added in warp order; accumulator (rt, nt, j) of lane (g, t) is
  // y[m = nt*8 + 2t + (j & 1), n = n0 + rt*16 + g + (j >= 2 ? 8 : 0)] (the MMA's C fragment).
  float* mine = red + warp * E * 32;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) mine[((rt * NT + nt) * 4 + j) * 32 + lane] = acc[rt][nt][j];
  __syncthreads();
  const int warps = blockDim.x / 32;
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  for (int i = threadIdx.x; i < E * 32; i += blockDim.x) {
    const int e = i / 32, ln = i % 32, j = e % 4, nt = (e / 4) % NT, rt = e / (4 * NT);
    const int n = n0 + rt * 16 + ln / 4 + (j >= 2 ? 8 : 0), m = nt * 8 + 2 * (ln % 4) + (j & 1);
    if (n >= a.N || m >= a.M) continue;
    float s = red[i];
    for (int w = 1; w < warps; ++w) s += red[w * E * 32 + i];
    if (bias != nullptr) s += static_cast<float>(bias[n]);
    y[int64_t(m) * a.N + n] = static_cast<T>(s);
  }
}

// One thread per 32-weight run: w[n, k] = q * scale computed exactly in fp32, rounded once to T.
template <typename S, int BITS, typename T>
__global__ void qdequant_kernel(const uint8_t* __restrict__ qw, const S* __restrict__ scales, T* __restrict__ w,
                                int64_t N, int64_t K, int G, int group) {
  const int64_t runs = K / 32, i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * runs) return;
  const int64_t n = i / runs, r = i % runs;
  const float s = scale_to_float(scales[n * G + r * 32 / group]);
  float v[32];
  if constexpr (BITS == 4) {
    const uint4 b = *reinterpret_cast<const uint4*>(qw + n * (K / 2) + r * 16);
    const uint32_t words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t byte = (words[j / 4] >> (8 * (j % 4))) & 0xFF;
      v[j] = static_cast<float>(static_cast<int>(byte & 0xF) - 8) * s;
      v[j + 16] = static_cast<float>(static_cast<int>(byte >> 4) - 8) * s;
    }
  } else {
    const uint4* src = reinterpret_cast<const uint4*>(qw + n * K + r * 32);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 b = src[h];
      const uint32_t words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int j = 0; j < 16; ++j)
        v[16 * h + j] = static_cast<float>(static_cast<int8_t>((words[j / 4] >> (8 * (j % 4))) & 0xFF)) * s;
    }
  }
  constexpr int V = cuda::Pack<T>::N;
  T* out = w + n * K + r * 32;
#pragma unroll
  for (int p = 0; p < 32 / V; ++p) {
    cuda::Pack<T> pk;
#pragma unroll
    for (int j = 0; j < V; ++j) pk.v[j] = static_cast<T>(v[p * V + j]);
    cuda::store_pack(out + p * V, pk);
  }
}

// Calls f.template operator()<S>() for the scales' dtype.
template <typename F>
void dispatch_scale(at::ScalarType s, F&& f) {
  if (s == at::kBFloat16) {
    f.template operator()<c10::BFloat16>();
  } else if (s == at::kHalf) {
    f.template operator()<c10::Half>();
  } else {
    f.template operator()<float>();
  }
}

template <typename F>
void dispatch_bits(int bits, F&& f) {
  if (bits == 4) {
    f.template operator()<4>();
  } else {
    f.template operator()<8>();
  }
}

// Calls f.template operator()<T, MT>() for x's dtype: T the activation type, MT the MMA operand type.
// bf16/fp16 only: fp32 x takes the dequantize + cuBLAS path (see qgemm_cuda).
template <typename F>
void dispatch_x(at::ScalarType s, F&& f) {
  if (s == at::kBFloat16) {
    f.template operator()<c10::BFloat16, __nv_bfloat16>();
  } else {
    f.template operator()<c10::Half, __half>();
  }
}

at::Tensor qgemv(const at::Tensor& x2, const at::Tensor& qweight, const at::Tensor& scales,
                 const std::optional<at::Tensor>& bias, int bits) {
  const int64_t M = x2.size(0), K = x2.size(1), N = qweight.size(0);
  const int NT = M <= 8 ? 1 : M <= 16 ? 2 : 4;
  const int runs = static_cast<int>(K / 32);
  at::Tensor y = at::empty({M, N}, x2.options());  // [M, N]
  GemvArgs a{};
  a.qw = static_cast<const uint8_t*>(qweight.const_data_ptr());
  a.scales = scales.const_data_ptr();
  a.bias = bias ? bias->const_data_ptr() : nullptr;
  a.y = y.mutable_data_ptr();
  a.M = static_cast<int>(M);
  a.N = static_cast<int>(N);
  a.K = K;
  a.G = static_cast<int>(scales.size(1));
  a.group = static_cast<int>(K / a.G);
  a.runs = runs;
  a.chunks = bits == 4 ? (runs + 1) / 2 : runs;

  // Grid: a block per 32 weight rows; its warps split K so that about kWarpsPerSm warps run per SM.
  const int row_groups = static_cast<int>(cuda::ceil_div<int64_t>(N, 16 * kRowTiles));
  const int smem_per_warp = kRowTiles * NT * 4 * 32 * static_cast<int>(sizeof(float));
  const int64_t want = cuda::ceil_div<int64_t>(int64_t(cuda::sm_count()) * kWarpsPerSm, row_groups);
  int warps = static_cast<int>(std::min<int64_t>({want, kMaxWarps, kReduceSmem / smem_per_warp, a.chunks}));
  warps = std::max(warps, 1);
  a.chunks_per_warp = static_cast<int>(cuda::ceil_div<int64_t>(a.chunks, warps));
  warps = static_cast<int>(cuda::ceil_div<int64_t>(a.chunks, a.chunks_per_warp));

  dispatch_x(x2.scalar_type(), [&]<typename T, typename MT>() {
    at::Tensor xp = at::empty({int64_t(runs) * NT * 32 * 4}, x2.options().dtype(at::kInt));  // 16 B per lane
    a.xp = reinterpret_cast<const uint4*>(xp.const_data_ptr());
    dispatch_bits(bits, [&]<int BITS>() {
      const int64_t threads = int64_t(runs) * NT * 32;
      qgemv_prep_kernel<T, MT, BITS><<<cuda::ceil_div<int64_t>(threads, 256), 256, 0, cuda::stream()>>>(
          x2.const_data_ptr<T>(), reinterpret_cast<uint4*>(xp.mutable_data_ptr()), a.M, K, runs, NT);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        const auto launch = [&]<int NTc>() {
          qgemv_kernel<MT, S, BITS, NTc, T><<<row_groups, warps * 32, warps * smem_per_warp, cuda::stream()>>>(a);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (NT == 1) {
          launch.template operator()<1>();
        } else if (NT == 2) {
          launch.template operator()<2>();
        } else {
          launch.template operator()<4>();
        }
      });
    });
  });
  return y;
}

// Packed weight -> [N, K] in dtype (the large-M path's workspace).
at::Tensor dequantize_cuda(const at::Tensor& qweight, const at::Tensor& scales, int bits, int64_t K,
                           at::ScalarType dtype) {
  const int64_t N = qweight.size(0);
  at::Tensor w = at::empty({N, K}, scales.options().dtype(dtype));  // [N, K]
  const int G = static_cast<int>(scales.size(1)), group = static_cast<int>(K / G);
  const int64_t threads = N * (K / 32);
  const auto run = [&]<typename T>() {
    dispatch_bits(bits, [&]<int BITS>() {
      dispatch_scale(scales.scalar_type(), [&]<typename S>() {
        qdequant_kernel<S, BITS, T><<<cuda::ceil_div<int64_t>(threads, 256), 256, 0, cuda::stream()>>>(
            static_cast<const uint8_t*>(qweight.const_data_ptr()), scales.const_data_ptr<S>(),
            w.mutable_data_ptr<T>(), N, K, G, group);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  };
  if (dtype == at::kBFloat16) {
    run.template operator()<c10::BFloat16>();
  } else if (dtype == at::kHalf) {
    run.template operator()<c10::Half>();
  } else {
    run.template operator()<float>();
  }
  return w;
}

at::Tensor qgemm_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "gemma4::qgemm";
  check_qgemm_args(x, qweight, scales, bias, op, c10::kCUDA);
  check_same_device(qweight, x, op, "qweight");
  check_same_device(scales, x, op, "scales");
  if (bias) check_same_device(*bias, x, op, "bias");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1), N = qweight.size(0), M = x.numel() / K;
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  if (M == 0 || N == 0) return at::zeros(out_shape, x.options());
  TORCH_CHECK(N < (int64_t(1) << 31) && K < (int64_t(1) << 31), op, ": N and K must be below 2^31 on CUDA");
  const int bits = qweight_bits(qweight, op);
  // The vector loads need a 16-byte aligned base; a sliced qweight may not have one.
  const at::Tensor qw = cuda::aligned16(qweight.const_data_ptr()) ? qweight : qweight.clone();
  const at::Tensor x2 = x.reshape({M, K});  // [M, K]
  at::Tensor y;
  // fp32 x as three bf16 planes through the tensor cores measured 3-4x plain fp32's error on the H200
  // (their fp32 accumulation is not round-to-nearest), outside the 2x rule: fp32 dequantizes and uses cuBLAS.
  if (M <= kGemvMaxRows && x.scalar_type() != at::kFloat) {
    y = qgemv(x2, qw, scales, bias, bits);  // [M, N]
  } else {
    const at::Tensor w = dequantize_cuda(qw, scales, bits, K, x.scalar_type());  // [N, K]
    y = at::linear(x2, w, bias);                                                  // [M, N]
  }
  return y.view(out_shape);
}

}  // namespace
}  // namespace gemma4::quant

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) { m.impl("qgemm", &gemma4::quant::qgemm_cuda); }
