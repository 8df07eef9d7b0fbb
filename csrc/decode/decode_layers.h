// The decoder layers of one decode step (one new token per sequence, a KV cache) driven from C++.
//
// Why: in a batch-1 decode step of E2B the kernels take ~25 ms and the host work between them ~4 ms: ~60 op
// calls a layer, each ~1-2 us of Python and dispatch, and ~20 nn.Module calls. Here the same ops are called
// from C++ through the dispatcher (the same kernels, in the same order, on the same inputs: the results are
// bit-identical to the Python layers, which are this driver's reference: python/gemma4/modeling/decoder.py,
// attention.py, mlp.py). python/gemma4/modeling/decode_step.py builds it from a model and decides when it may
// run (no hooks, no adapters, no autograd); everything else keeps the Python layers.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <optional>
#include <string>
#include <vector>

namespace gemma4 {

// One projection as the Python module computes it at decode: modeling/linear.py's Linear (gemma4::linear
// or F.linear, whichever its rule picked for these rows) or quant/modules.py's QuantLinear (gemma4::qgemm).
struct DecodeLinear {
  enum class Kind : int64_t { Gemma4 = 0, Torch = 1, Quant = 2 };
  Kind kind = Kind::Torch;
  at::Tensor weight;               // [N, K] float, or the packed qweight
  at::Tensor scales;               // Quant only
  std::optional<at::Tensor> bias;  // [N] in the activations' dtype
  at::Tensor operator()(const at::Tensor& x) const;
};

// A decoder layer's weights and sizes, and the KV-cache tensors a decode token is written into and read from.
struct DecodeLayer {
  int64_t index = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t kv_source = -1;  // a KV-shared layer: the layer whose K/V it reads; -1: it computes its own
  bool stores_shared_kv = false, k_eq_v = false;
  double eps = 1e-6, rope_scaling = 1.0;
  std::string activation;
  at::Tensor inv_freq;  // [hd/2] fp32, the layer type's RoPE frequencies
  at::Tensor input_norm, post_attention_norm, pre_ff_norm, post_ff_norm, q_norm, k_norm, layer_scalar;
  DecodeLinear q, k, v, o, gate, up, down;
  // own K/V: [B, S, nKV, hd] views of the cache buffers, the slot [1] int64 the token goes to, the slot mask [B, S]
  at::Tensor key_cache, value_cache, slot, slot_mask;
  // per-layer input (PLE)
  bool has_ple = false;
  DecodeLinear ple_gate, ple_proj;
  at::Tensor ple_norm;
  // mixture of experts beside the dense MLP
  bool has_moe = false, quant_experts = false;
  double router_eps = 1e-6, router_root_size = 1.0;
  int64_t top_k = 0;
  DecodeLinear router_proj;
  at::Tensor router_scale, per_expert_scale, pre_ff_norm_2, post_ff_norm_1, post_ff_norm_2;
  at::Tensor gate_up, down_experts;                    // dense experts [E, 2Im, H], [E, H, Im]
  at::Tensor gate_up_q, gate_up_s, down_q, down_s;  // quantized experts

  at::Tensor attention(const at::Tensor& x, const at::Tensor& positions, std::vector<std::vector<at::Tensor>>& shared) const;
  at::Tensor feed_forward(const at::Tensor& residual) const;
  at::Tensor forward(const at::Tensor& x, const at::Tensor& positions, const std::optional<at::Tensor>& ple,
                     std::vector<std::vector<at::Tensor>>& shared) const;
};

// torch.classes.gemma4.DecodeLayers: add_layer once per decoder layer, then step once per decode token.
struct DecodeLayers : torch::CustomClassHolder {
  // tensors/ints/floats: the layer's fields by name (decode_step.py's _layer_fields); a missing one is an error
  // naming it.
  void add_layer(const c10::Dict<std::string, at::Tensor>& tensors, const c10::Dict<std::string, int64_t>& ints,
                 const c10::Dict<std::string, double>& floats, const std::string& activation);
  // x [B, 1, H] (the token embeddings), positions [B, 1] int64, ple [B, 1, L, P] or None
  // -> [B, 1, H]: the hidden state after the last layer (before the final norm).
  at::Tensor step(const at::Tensor& x, const at::Tensor& positions, const std::optional<at::Tensor>& ple) const;
  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }

  std::vector<DecodeLayer> layers;
};

}  // namespace gemma4
