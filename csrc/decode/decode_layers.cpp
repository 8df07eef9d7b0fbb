// The decoder layers of a decode step from C++ (decode_layers.h says why). Each function below mirrors one
// Python method line by line, and names it: the same ops with the same arguments, so the same numbers.
#include "decode_layers.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/autograd_util.h"

namespace gemma4 {
namespace {

constexpr const char* kWhere = "gemma4.DecodeLayers";
using Pair = std::tuple<at::Tensor, at::Tensor>;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double)>("gemma4::rms_norm");
  return op.call(x, weight.defined() ? std::optional<at::Tensor>(weight) : std::nullopt, eps);
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq) {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("gemma4::rope");
  return op.call(x, positions, inv_freq);
}

at::Tensor gated_activation(const at::Tensor& gate, const at::Tensor& up, const std::string& activation) {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>("gemma4::gated_activation");
  return op.call(gate, up, activation);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask,
                     int64_t window) {
  static const auto op = typed_op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, double, int64_t)>("gemma4::attention");
  return std::get<0>(op.call(q, k, v, key_mask, 1.0, window));  // scale 1: the q/k norms carry it
}

// ---- reading add_layer's dictionaries: a missing field is one error naming it ----
template <class V>
V need(const c10::Dict<std::string, V>& d, const std::string& key) {
  auto it = d.find(key);
  TORCH_CHECK(it != d.end(), kWhere, ".add_layer: missing field '", key, "'");
  return it->value();
}

at::Tensor maybe(const c10::Dict<std::string, at::Tensor>& d, const std::string& key) {
  auto it = d.find(key);
  return it == d.end() ? at::Tensor() : it->value();
}

DecodeLinear read_linear(const c10::Dict<std::string, at::Tensor>& t, const c10::Dict<std::string, int64_t>& i,
                         const std::string& name) {
  DecodeLinear lin;
  int64_t kind = need(i, name + ".kind");
  TORCH_CHECK(kind >= 0 && kind <= 2, kWhere, ".add_layer: ", name, ".kind must be 0, 1 or 2, got ", kind);
  lin.kind = static_cast<DecodeLinear::Kind>(kind);
  lin.weight = need(t, name + ".weight");
  if (lin.kind == DecodeLinear::Kind::Quant) lin.scales = need(t, name + ".scales");
  at::Tensor bias = maybe(t, name + ".bias");
  if (bias.defined()) lin.bias = bias;
  return lin;
}

}  // namespace

// modeling/linear.py Linear.forward (ops.linear makes x contiguous) / quant/modules.py QuantLinear.forward
at::Tensor DecodeLinear::operator()(const at::Tensor& x) const {
  switch (kind) {
    case Kind::Gemma4: {
      static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&)>("gemma4::linear");
      return op.call(x.contiguous(), weight, bias);
    }
    case Kind::Quant: {
      static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&)>("gemma4::qgemm");
      return op.call(x.contiguous(), weight, scales, bias);
    }
    case Kind::Torch:
    default:
      return at::linear(x, weight, bias);
  }
}

// modeling/attention.py Gemma4Attention.forward at T == 1 with cache.update's decode branch; `shared` holds the
// (key, value, key_mask) a KV-sharing source layer published, by layer index.
at::Tensor DecodeLayer::attention(const at::Tensor& x, const at::Tensor& positions,
                                  std::vector<std::vector<at::Tensor>>& shared) const {
  const int64_t B = x.size(0), T = x.size(1);
  auto rope_scaled = [&](const at::Tensor& t) {  // Gemma4Attention._rope
    at::Tensor out = rope(t, positions, inv_freq);  // [B,T,heads,hd]
    return rope_scaling == 1.0 ? out : out * rope_scaling;
  };
  at::Tensor query = q(x).view({B, T, heads, head_dim});  // [B,T,nH,hd]
  query = rope_scaled(rms_norm(query, q_norm, eps));
  at::Tensor key, value, key_mask;
  constexpr int64_t kWindow = 0;  // decode reads every filled slot (a ring holds only its window)
  if (kv_source >= 0) {
    const auto& src = shared.at(kv_source);
    TORCH_CHECK(!src.empty(), kWhere, ": layer ", index, " reads the K/V of layer ", kv_source, ", which has none");
    key = src[0], value = src[1], key_mask = src[2];
  } else {
    at::Tensor k_raw = k(x).view({B, T, kv_heads, head_dim});  // [B,T,nKV,hd]
    at::Tensor v_raw = k_eq_v ? k_raw : v(x).view({B, T, kv_heads, head_dim});
    at::Tensor k_new = rope_scaled(rms_norm(k_raw, k_norm, eps));  // [B,T,nKV,hd]
    at::Tensor v_new = rms_norm(v_raw, at::Tensor(), eps);
    auto stored = [](const at::Tensor& t, const at::Tensor& cache) {
      return t.scalar_type() == cache.scalar_type() ? t : t.to(cache.scalar_type());
    };
    key_cache.index_copy_(1, slot, stored(k_new, key_cache));  // [B,S,nKV,hd] view of the buffer
    value_cache.index_copy_(1, slot, stored(v_new, value_cache));
    key = key_cache, value = value_cache, key_mask = slot_mask;
    if (stores_shared_kv) shared.at(index) = {key, value, key_mask};
  }
  at::Tensor out = gemma4::attention(query, key, value, key_mask, kWindow);  // [B,T,nH,hd]
  return o(out.reshape({B, T, heads * head_dim}));
}

// modeling/decoder.py Gemma4DecoderLayer.feed_forward (with mlp.py's Gemma4MLP, Gemma4Router, Gemma4Experts)
at::Tensor DecodeLayer::feed_forward(const at::Tensor& residual) const {
  at::Tensor h = rms_norm(residual, pre_ff_norm, eps);
  at::Tensor g = gate(h), u = up(h);  // [B,T,I], in Gemma4MLP's order
  at::Tensor mlp_out = down(gated_activation(g, u, activation));  // [B,T,H]
  if (!has_moe) return rms_norm(mlp_out, post_ff_norm, eps);
  at::Tensor residual_flat = residual.reshape({-1, residual.size(-1)});  // [N,H]
  at::Tensor z = rms_norm(residual_flat, at::Tensor(), router_eps) * router_scale * router_root_size;
  static const auto route = typed_op<Pair(const at::Tensor&, const at::Tensor&, int64_t)>("gemma4::moe_route");
  auto [weights, indices] = route.call(router_proj(z), per_expert_scale, top_k);  // [N,K] fp32, [N,K]
  at::Tensor expert_in = rms_norm(residual_flat, pre_ff_norm_2, eps);
  at::Tensor expert_out;
  if (quant_experts) {
    static const auto op =
        typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>(
            "gemma4::moe_experts_quant");
    expert_out = op.call(expert_in.contiguous(), weights, indices, gate_up_q, gate_up_s, down_q, down_s, activation);
  } else {
    static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, c10::string_view)>(
        "gemma4::moe_experts");
    expert_out = op.call(expert_in, weights, indices, gate_up, down_experts, activation);  // [N,H]
  }
  expert_out = rms_norm(expert_out.view(residual.sizes()), post_ff_norm_2, eps);
  return rms_norm(rms_norm(mlp_out, post_ff_norm_1, eps) + expert_out, post_ff_norm, eps);
}

// modeling/decoder.py Gemma4DecoderLayer.forward (and per_layer_input)
at::Tensor DecodeLayer::forward(const at::Tensor& x_in, const at::Tensor& positions,
                                const std::optional<at::Tensor>& ple, std::vector<std::vector<at::Tensor>>& shared) const {
  at::Tensor attn = attention(rms_norm(x_in, input_norm, eps), positions, shared);
  at::Tensor x = x_in + rms_norm(attn, post_attention_norm, eps);  // [B,T,H]
  x = x + feed_forward(x);
  if (has_ple) {
    at::Tensor g = ple_gate(x);           // [B,T,P]
    at::Tensor ple_i = ple->select(2, index);  // [B,T,P] view of [B,T,L,P]
    if (ple_i.scalar_type() != g.scalar_type()) ple_i = ple_i.to(g.scalar_type());
    x = x + rms_norm(ple_proj(gated_activation(g, ple_i, activation)), ple_norm, eps);
  }
  return x * layer_scalar;
}

void DecodeLayers::add_layer(const c10::Dict<std::string, at::Tensor>& t, const c10::Dict<std::string, int64_t>& i,
                             const c10::Dict<std::string, double>& f, const std::string& activation) {
  DecodeLayer L;
  L.index = num_layers();
  L.heads = need(i, "heads"), L.kv_heads = need(i, "kv_heads"), L.head_dim = need(i, "head_dim");
  L.kv_source = need(i, "kv_source");
  TORCH_CHECK(L.kv_source < L.index, kWhere, ".add_layer: layer ", L.index, " reads the K/V of layer ", L.kv_source,
              ", which is not an earlier one");
  L.stores_shared_kv = need(i, "stores_shared_kv") != 0, L.k_eq_v = need(i, "k_eq_v") != 0;
  L.eps = need(f, "eps"), L.rope_scaling = need(f, "rope_scaling");
  L.activation = activation;
  L.inv_freq = need(t, "inv_freq");
  L.input_norm = need(t, "input_layernorm"), L.post_attention_norm = need(t, "post_attention_layernorm");
  L.pre_ff_norm = need(t, "pre_feedforward_layernorm"), L.post_ff_norm = need(t, "post_feedforward_layernorm");
  L.layer_scalar = need(t, "layer_scalar");
  L.q = read_linear(t, i, "q_proj"), L.o = read_linear(t, i, "o_proj"), L.q_norm = need(t, "q_norm");
  if (L.kv_source < 0) {
    L.k = read_linear(t, i, "k_proj");
    if (!L.k_eq_v) L.v = read_linear(t, i, "v_proj");
    L.k_norm = need(t, "k_norm");
    L.key_cache = need(t, "key_cache"), L.value_cache = need(t, "value_cache");
    L.slot = need(t, "slot"), L.slot_mask = need(t, "slot_mask");
  }
  L.gate = read_linear(t, i, "gate_proj"), L.up = read_linear(t, i, "up_proj"), L.down = read_linear(t, i, "down_proj");
  L.has_ple = need(i, "has_ple") != 0;
  if (L.has_ple) {
    L.ple_gate = read_linear(t, i, "per_layer_input_gate"), L.ple_proj = read_linear(t, i, "per_layer_projection");
    L.ple_norm = need(t, "post_per_layer_input_norm");
  }
  L.has_moe = need(i, "has_moe") != 0;
  if (L.has_moe) {
    L.router_eps = need(f, "router.eps"), L.router_root_size = need(f, "router.scalar_root_size");
    L.top_k = need(i, "router.top_k");
    L.router_proj = read_linear(t, i, "router.proj");
    L.router_scale = need(t, "router.scale"), L.per_expert_scale = need(t, "router.per_expert_scale");
    L.pre_ff_norm_2 = need(t, "pre_feedforward_layernorm_2");
    L.post_ff_norm_1 = need(t, "post_feedforward_layernorm_1"), L.post_ff_norm_2 = need(t, "post_feedforward_layernorm_2");
    L.quant_experts = need(i, "quant_experts") != 0;
    if (L.quant_experts) {
      L.gate_up_q = need(t, "experts.gate_up_proj_qweight"), L.gate_up_s = need(t, "experts.gate_up_proj_scales");
      L.down_q = need(t, "experts.down_proj_qweight"), L.down_s = need(t, "experts.down_proj_scales");
    } else {
      L.gate_up = need(t, "experts.gate_up_proj"), L.down_experts = need(t, "experts.down_proj");
    }
  }
  layers.push_back(std::move(L));
}

at::Tensor DecodeLayers::step(const at::Tensor& x_in, const at::Tensor& positions,
                              const std::optional<at::Tensor>& ple) const {
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == 1, kWhere, ".step: x must be [B, 1, H] (one new token), got shape ",
              x_in.sizes());
  const bool wants_ple = !layers.empty() && layers.front().has_ple;
  TORCH_CHECK(ple.has_value() == wants_ple, kWhere, ".step: ple must be ", wants_ple ? "given" : "None",
              " for this model");
  std::vector<std::vector<at::Tensor>> shared(layers.size());  // layer -> (key, value, key_mask) it published
  at::Tensor x = x_in;
  for (const DecodeLayer& layer : layers) x = layer.forward(x, positions, ple, shared);
  return x;
}

}  // namespace gemma4

// A runtime object rather than an operator (no schema, fake kernel or autograd): it only sequences the ops
// above, which have theirs. Registered here, not in csrc/registration.cpp, so that builds without this
// folder (GEMMA4_KERNEL_DIRS) do not miss the type.
TORCH_LIBRARY_FRAGMENT(gemma4, m) {
  m.class_<gemma4::DecodeLayers>("DecodeLayers")
      .def(torch::init<>())
      .def("add_layer", &gemma4::DecodeLayers::add_layer)
      .def("step", &gemma4::DecodeLayers::step)
      .def("num_layers", &gemma4::DecodeLayers::num_layers);
}
