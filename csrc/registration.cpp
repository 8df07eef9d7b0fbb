// Every gemma4 operator schema, one commented line each. Kernels register their implementations
// with TORCH_LIBRARY_IMPL(gemma4, CPU|CUDA, m) in their own folders; fake (meta) kernels and
// autograd live in python/gemma4/ops/.
//
// Layout conventions: activations are [B, T, heads, head_dim] (the layout the projections
// produce); statistics and accumulation are float32 for bf16/fp16 inputs.
#include <torch/library.h>

TORCH_LIBRARY(gemma4, m) {
  // y = x * (mean(x^2, -1) + eps)^-1/2 * weight (weight optional; Gemma 4 multiplies by w, not 1+w).
  m.def("rms_norm(Tensor x, Tensor? weight, float eps) -> Tensor");
  // (grad_x, grad_weight) of rms_norm; grad_weight is an empty tensor when weight is None.
  m.def("rms_norm_backward(Tensor grad_out, Tensor x, Tensor? weight, float eps) -> (Tensor, Tensor)");

  // Rotate-half RoPE: x [B,T,nH,hd], positions int64 [B|1,T], inv_freq fp32 [hd/2] (zeros allowed);
  // y = x*cos(p*f) + rotate_half(x)*sin(p*f), angles in fp32.
  m.def("rope(Tensor x, Tensor positions, Tensor inv_freq) -> Tensor");
  // grad_x of rope: the rotation by the opposite angle.
  m.def("rope_backward(Tensor grad_out, Tensor positions, Tensor inv_freq) -> Tensor");

  // Causal attention, GQA by head index (query head h reads KV head h / (nH/nKV)), online softmax:
  // q [B,T,nH,hd], k/v [B,S,nKV,hd] (S >= T; query t sits at key index S-T+t; last dim stride 1),
  // key_mask bool [B,S] (true = may attend), window > 0 keeps the last `window` keys incl. self.
  // Returns (out [B,T,nH,hd], lse fp32 [B,nH,T]); a row with no visible key gives zeros.
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? key_mask, float scale, int window) -> (Tensor, Tensor)");
  // (grad_q, grad_k, grad_v) of attention, from the saved out and lse.
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_mask, float scale, int window) -> (Tensor, Tensor, Tensor)");

  // Gated activation: act(gate) * up, act = "gelu_tanh" (GeGLU) or "silu" (SwiGLU); gate, up [..., I].
  m.def("gated_activation(Tensor gate, Tensor up, str activation) -> Tensor");
  // (grad_gate, grad_up) of gated_activation.
  m.def("gated_activation_backward(Tensor grad_out, Tensor gate, Tensor up, str activation) -> (Tensor, Tensor)");

  // MoE routing: p = softmax(logits [N,E]) in fp32 over all experts, top-k, renormalise over the k,
  // times per_expert_scale[idx]. Returns (weights fp32 [N,K], indices int64 [N,K]).
  m.def("moe_route(Tensor logits, Tensor per_expert_scale, int top_k) -> (Tensor, Tensor)");
  // (grad_logits, grad_per_expert_scale) of moe_route for the saved indices.
  m.def("moe_route_backward(Tensor grad_weights, Tensor logits, Tensor per_expert_scale, Tensor indices) -> (Tensor, Tensor)");

  // MoE experts, tokens grouped by expert: out[n] = sum_k w[n,k] * down[e] @ (act(G_e x[n]) * (U_e x[n])),
  // e = indices[n,k], gate_up [E,2*Im,H] (rows 0..Im-1 = G_e, Im.. = U_e), down [E,H,Im], x [N,H].
  m.def("moe_experts(Tensor x, Tensor weights, Tensor indices, Tensor gate_up, Tensor down, str activation) -> Tensor");
  // (grad_x, grad_weights, grad_gate_up, grad_down) of moe_experts.
  m.def("moe_experts_backward(Tensor grad_out, Tensor x, Tensor weights, Tensor indices, Tensor gate_up, Tensor down, str activation) -> (Tensor, Tensor, Tensor, Tensor)");

  // MoE experts on int4/int8 packed weights (qgemm's format and groups, one matrix per expert):
  // gate_up_qweight [E,2*Im,H/2|H] uint8|int8, gate_up_scales [E,2*Im,H/group], down_qweight [E,H,Im/2|Im],
  // down_scales [E,H,Im/group']; x [N,H] fp32/bf16/fp16; per expert gate_up = qgemm, act(gate)*up, qgemm,
  // each rounded to x.dtype; out[n] = sum_k weights[n,k] * y in fp32, rounded once to x.dtype.
  m.def("moe_experts_quant(Tensor x, Tensor weights, Tensor indices, Tensor gate_up_qweight, Tensor gate_up_scales, Tensor down_qweight, Tensor down_scales, str activation) -> Tensor");
  // (grad_x, grad_weights) of moe_experts_quant; the quantized weights are frozen.
  m.def("moe_experts_quant_backward(Tensor grad_out, Tensor x, Tensor weights, Tensor indices, Tensor gate_up_qweight, Tensor gate_up_scales, Tensor down_qweight, Tensor down_scales, str activation) -> (Tensor, Tensor)");

  // Weight-only quantized linear y = x @ (q * scale)^T (+ bias), float32 accumulation: x [..., K] fp32/bf16/fp16,
  // qweight uint8 [N,K/2] (int4 as q+8, Q4_0 nibble order) or int8 [N,K], scales [N, K/group], bias [N] in x.dtype.
  m.def("qgemm(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor");
  // CPU qgemm instruction set: "" reports it, "auto" | "avx2" | "avx512" selects it (tests run each path).
  m.def("qgemm_cpu_isa(str request) -> str");
  // CUDA qgemm route for 16-bit x above 32 rows: "" reports it, "auto" | "tiled" | "dequant" selects it.
  m.def("qgemm_cuda_path(str request) -> str");

  // Linear: y = x [..., K] @ weight [N, K]^T (+ bias [N]); float32 or bfloat16 (x, weight, bias one
  // dtype, or a bf16 weight under fp32 x), fp32 accumulation, one rounding to x's dtype.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // linear's input gradient: grad_out [..., N] @ weight [N, K] -> [..., K], the same dtypes and rounding.
  m.def("linear_grad_input(Tensor grad_out, Tensor weight) -> Tensor");
  // CPU decode (<= 8 rows) instruction set: "" reports it ("avx2", "avx512" or "avx512bf16"), "auto" | "avx2" |
  // "avx512" selects it (tests run each path).
  m.def("linear_cpu_isa(str request) -> str");
  // CPU attention's bf16 decode products (query groups of <= 8 rows): "" reports their instruction set
  // ("avx512bf16": vdpbf16ps, or "avx2": fp32 FMAs on widened tiles), "auto" | "avx2" | "avx512bf16" selects it.
  m.def("attention_cpu_isa(str request) -> str");

  // Cross-entropy through Gemma's logit soft-cap, loss and gradient in one pass: per row i of logits [n,V]
  // (pre-cap), c = cap*tanh(x/cap) (c = x when softcap is None), returns loss[i] = row_weight[i] *
  // (logsumexp(c) - c[targets[i]]) (fp32; fp64 for fp64) and overwrites the row with d loss[i] / d x.
  m.def("softcap_cross_entropy(Tensor(a!) logits, Tensor targets, Tensor row_weight, float? softcap) -> Tensor");

  // The thin GEMMs of a LoRA update with float32 factors over an activation in its own dtype (fp32, bf16,
  // fp16), widened in registers, float32 accumulation (PEFT's maths without the float32 copies):
  // lora_down: scale * x [N,K] @ weight [r,K]^T -> float32 [N,r]  (weight: float32, any strides).
  m.def("lora_down(Tensor x, Tensor weight, float scale) -> Tensor");
  // lora_up: base [N,M] + scale * down [N,r] @ weight [M,r]^T, summed in float32 and rounded once to dtype
  // (base None: the product alone).
  m.def("lora_up(Tensor down, Tensor weight, float scale, Tensor? base, ScalarType dtype) -> Tensor");
  // lora_weight_grad: scale * d [N,r]^T @ x [N,K] -> float32 [r,K] (a factor's gradient), deterministic.
  m.def("lora_weight_grad(Tensor x, Tensor d, float scale) -> Tensor");
}

// A gemma4 op called on CUDA tensors where no CUDA kernel exists says why, instead of the dispatcher's
// list of backends: in a CPU-only build every op, in a CUDA build the ops that have only a CPU kernel.
namespace {

void no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack*) {
#if defined(GEMMA4_WITH_CUDA)
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(), " has no CUDA kernel yet; run it on CPU tensors");
#else
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(),
                              " was called on CUDA tensors, but this gemma4 was built without CUDA kernels "
                              "(its torch had no CUDA, or nvcc was not found). Rebuild it on the CUDA machine "
                              "with -DGEMMA4_CUDA=ON (docs/install.md)");
#endif
}

}  // namespace

TORCH_LIBRARY_IMPL(gemma4, CUDA, m) {
#if defined(GEMMA4_WITH_CUDA)
  const char* cpu_only[] = {"linear", "linear_grad_input"};
#else
  const char* cpu_only[] = {"rms_norm", "rms_norm_backward", "rope", "rope_backward", "attention",
                            "attention_backward", "gated_activation", "gated_activation_backward",
                            "moe_route", "moe_route_backward", "moe_experts", "moe_experts_backward",
                            "moe_experts_quant", "moe_experts_quant_backward", "qgemm", "linear",
                            "linear_grad_input", "softcap_cross_entropy", "lora_down", "lora_up",
                            "lora_weight_grad"};
#endif
  for (const char* name : cpu_only) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernel>());
}
