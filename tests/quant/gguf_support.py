"""A small GGUF writer for the tests: a model of ours written as llama.cpp's convert_hf_to_gguf.py writes
Gemma 4 (its Gemma4Model and TextModel.prepare_tensors, read for the facts; CI has no llama.cpp), plus the
float weights a reader of that file must end up with (the `gguf` package's own dequantization).

The name table is written here independently of gemma4.hf_format.gguf_tensors, so a wrong entry there
cannot hide behind the same wrong entry here (the local llama.cpp test checks both against the converter).
"""
import contextlib
import ctypes
import re
from pathlib import Path

import gguf
import numpy as np
import torch

GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight", "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
          "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
          "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight"}
LAYER = {"input_layernorm.weight": "attn_norm", "layer_scalar": "layer_output_scale",
         "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
         "self_attn.o_proj.weight": "attn_output", "self_attn.q_norm.weight": "attn_q_norm",
         "self_attn.k_norm.weight": "attn_k_norm", "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up",
         "mlp.down_proj.weight": "ffn_down", "post_attention_layernorm.weight": "post_attention_norm",
         "pre_feedforward_layernorm.weight": "ffn_norm", "post_feedforward_layernorm.weight": "post_ffw_norm",
         "post_feedforward_layernorm_1.weight": "post_ffw_norm_1",
         "post_feedforward_layernorm_2.weight": "post_ffw_norm_2",
         "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2", "router.proj.weight": "ffn_gate_inp",
         "experts.gate_up_proj": "ffn_gate_up_exps", "experts.down_proj": "ffn_down_exps",
         "per_layer_input_gate.weight": "inp_gate", "per_layer_projection.weight": "proj",
         "post_per_layer_input_norm.weight": "post_norm"}
SCALES = {"router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale"}



def add_metadata(w, meta: dict) -> None:
    """Write {key: value} as llama.cpp's converter types them: lists as arrays, str, bool, float32, else uint32
    (None: left out)."""
    for key, value in meta.items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif value is not None:
            w.add_uint32(key, int(value))

def gguf_name(key: str) -> str:
    if key in GLOBAL:
        return GLOBAL[key]
    i, rest = re.match(r"model\.layers\.(\d+)\.(.+)$", key).groups()
    return f"blk.{i}.{SCALES[rest]}" if rest in SCALES else f"blk.{i}.{LAYER[rest]}.weight"


def tensor_type(name: str, shape, qtype: str) -> str:
    """The converter's rule: 1-D tensors, norms, the router and ".scale"s F32; a quantized type that does not
    fit a row (K % 32) falls back to F16."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or ".ffn_gate_inp." in name or not name.endswith(".weight"):
        return "F32"
    if qtype in ("Q8_0", "Q4_0") and shape[-1] % 32:
        return "F16"
    return qtype


def rope_freqs(config) -> np.ndarray:
    """The converter's generated rope_freqs: 1 on the rotated frequency pairs of full layers, 1e30 on the rest."""
    n_rot = int(config.global_head_dim * config.rope_parameters["full_attention"]["partial_rotary_factor"] / 2)
    return np.array([1.0] * n_rot + [1e30] * (config.global_head_dim // 2 - n_rot), dtype=np.float32)


def metadata(config) -> dict:
    """The metadata llama.cpp's converter writes for a model of `config` (tokenizer: the ids and
    placeholder pieces only)."""
    c = config
    sliding = [t == "sliding_attention" for t in c.layer_types]
    n, first_shared = c.num_hidden_layers, c.num_hidden_layers - c.num_kv_shared_layers
    full = c.rope_parameters["full_attention"]
    meta = {
        "gemma4.block_count": n, "gemma4.context_length": c.max_position_embeddings,
        "gemma4.embedding_length": c.hidden_size,
        "gemma4.feed_forward_length": ([c.intermediate_size * (2 if i >= first_shared else 1) for i in range(n)]
                                       if c.use_double_wide_mlp else c.intermediate_size),
        "gemma4.attention.head_count": c.num_attention_heads,
        "gemma4.attention.head_count_kv": ([c.num_key_value_heads if s else c.num_global_key_value_heads
                                            for s in sliding] if c.num_global_key_value_heads else
                                           c.num_key_value_heads),
        "gemma4.rope.freq_base": float(full["rope_theta"]),
        "gemma4.rope.freq_base_swa": float(c.rope_parameters["sliding_attention"]["rope_theta"]),
        "gemma4.attention.layer_norm_rms_epsilon": c.rms_norm_eps,
        "gemma4.attention.key_length": c.global_head_dim, "gemma4.attention.value_length": c.global_head_dim,
        "gemma4.attention.key_length_swa": c.head_dim, "gemma4.attention.value_length_swa": c.head_dim,
        "gemma4.final_logit_softcapping": c.final_logit_softcapping,
        "gemma4.attention.sliding_window": c.sliding_window,
        "gemma4.attention.shared_kv_layers": c.num_kv_shared_layers,
        "gemma4.embedding_length_per_layer_input": c.hidden_size_per_layer_input,
        "gemma4.attention.sliding_window_pattern": sliding,
        "gemma4.rope.dimension_count": c.global_head_dim, "gemma4.rope.dimension_count_swa": c.head_dim,
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"t{i}" for i in range(4, c.vocab_size)],
        "tokenizer.ggml.bos_token_id": c.bos_token_id, "tokenizer.ggml.eos_token_id": c.eos_token_id,
        "tokenizer.ggml.padding_token_id": c.pad_token_id,
    }
    if c.enable_moe_block:
        meta.update({"gemma4.expert_count": c.num_experts, "gemma4.expert_used_count": c.top_k_experts,
                     "gemma4.expert_feed_forward_length": c.moe_intermediate_size})
    return meta


# llama.cpp's loader wants merges for a gemma4 vocabulary (the tests feed it token ids, so any will do)
LLAMACPP_METADATA = {"tokenizer.ggml.merges": ["t 4"]}


def write_gguf(model, path, qtype: str = "F32", edit=None, skip=(), extra=None) -> dict[str, torch.Tensor]:
    """Write `model` (ours) to `path` in `qtype`; return {our key: the float32 weight the file holds}.
    edit(key, value) may change a metadata value before writing (None drops the key); tensors named in
    `skip` are left out; `extra` metadata is added (e.g. LLAMACPP_METADATA, for llama.cpp's loader)."""
    c = model.config
    meta = metadata(c)
    if edit is not None:
        meta = {k: v for k, v in ((k, edit(k, v)) for k, v in meta.items()) if v is not None}
    meta.update(extra or {})
    w = gguf.GGUFWriter(str(path), "gemma4")
    add_metadata(w, meta)
    if "rope_freqs.weight" not in skip:
        w.add_tensor("rope_freqs.weight", rope_freqs(c))
    held = {}
    tied = c.tie_word_embeddings
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        name = gguf_name(key)
        if name in skip:
            continue
        x = t.detach().float().numpy()
        kind = tensor_type(name, x.shape, qtype)
        q = gguf.GGMLQuantizationType[kind]
        data = x if kind == "F32" else x.astype(np.float16) if kind == "F16" else gguf.quants.quantize(x, q)
        w.add_tensor(name, data, raw_dtype=None if kind in ("F32", "F16") else q)
        back = data if kind in ("F32", "F16") else gguf.quants.dequantize(data, q)
        held[key] = torch.from_numpy(np.asarray(back, dtype=np.float32).reshape(x.shape).copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def random_model(preset):
    """A model of the preset (a name or a Gemma4Config) with weights of realistic spread and norms/scales away
    from 1 (as test_quantize)."""
    import gemma4

    model = gemma4.Gemma4ForCausalLM(gemma4.get_preset(preset) if isinstance(preset, str) else preset).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "scale" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.05)
    return model


def llamacpp_logits(path, ids: list[int]) -> torch.Tensor:
    """llama.cpp's (llama-cpp-python's) float64 logits [len(ids), vocab] for one sequence, f32 KV cache."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2,
                          type_k=0, type_v=0, verbose=False)  # type 0 = GGML_TYPE_F32 KV cache
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64))


def llamacpp_logits_and_router(path, ids: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """llamacpp_logits, and llama.cpp's router logits {layer: float64 [len(ids), E]}: its graph's
    `ffn_moe_logits-<layer>` tensors (f32, contiguous), read in the scheduler's eval callback (cb_eval)."""
    import llama_cpp
    import llama_cpp.llama_cpp as api

    lib = ctypes.CDLL(str(sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))[0]))
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    router: dict[int, torch.Tensor] = {}
    errors: list[str] = []  # an exception cannot leave a ctypes callback: raised after eval

    def watch(t, ask, _user):
        if lib.ggml_get_name(t) != t + _GgmlTensor.name.offset:  # the struct layout this reads
            errors.append("ggml_tensor's layout differs from gguf_support._GgmlTensor")
            return not ask
        tensor = _GgmlTensor.from_address(t)
        name = tensor.name.decode()
        if not name.startswith("ffn_moe_logits-"):
            return not ask  # asked: not wanted; after computing: go on
        if ask:
            return True
        e, n = tensor.ne[0], tensor.ne[1]
        if tensor.type != 0 or tensor.nb[1] != 4 * e:  # GGML_TYPE_F32, rows contiguous
            errors.append(f"{name}: type {tensor.type}, row stride {tensor.nb[1]}")
            return True
        data = np.ctypeslib.as_array(ctypes.cast(tensor.data, ctypes.POINTER(ctypes.c_float)), (n * e,))
        router[int(name.rsplit("-", 1)[1])] = torch.from_numpy(data.reshape(n, e).astype(np.float64))
        return True

    callback = api.ggml_backend_sched_eval_callback(watch)
    defaults = api.llama_context_default_params

    def with_callback():  # Llama() takes no cb_eval: it reaches the context through its default params
        params = defaults()
        params.cb_eval = callback
        return params

    api.llama_context_default_params = with_callback
    try:
        llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_batch=64, n_ubatch=64,
                              n_threads=2, type_k=0, type_v=0, verbose=False)
    finally:
        api.llama_context_default_params = defaults
    llm.eval(ids)
    logits = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64))
    llm.close()
    if errors:
        raise RuntimeError(errors[0])
    return logits, router


class _GgmlTensor(ctypes.Structure):
    """ggml.h's struct ggml_tensor (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64);
    llamacpp_logits_and_router checks the name's offset against ggml_get_name."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


# ------------------------------------------------------------------------------------------------------------
# llama.cpp's CPU numerics imitated in our model: with them our model of a Q8_0 file gives llama.cpp's logits
# (tests/quant/test_gguf_q8_llamacpp.py; the investigation: dev/quant/gguf_moe_q8_gap.py)
# ------------------------------------------------------------------------------------------------------------

def q8_0_round(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] (K % 32 == 0) as ggml's CPU backend hands it to a matmul with Q8_0 / Q4_0 weights (their
    vec_dot_type is Q8_0, ggml-quants.c's quantize_row_q8_0): per block of 32 along K, amax = max|x|,
    d = fp16(amax / 127), q = round(x * 127 / amax) in [-127, 127] (0 for an all-zero block); the dot product
    multiplies q * d. (The x86 build scales by 127 / amax and rounds to nearest even, the scalar reference
    by 1 / (amax / 127) and half away from zero: they differ on ties only.)"""
    blocks = x.float().reshape(-1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    q = torch.round(blocks * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    return (q * (amax / 127.0).half().float()).reshape(x.shape).to(x.dtype)


def fp16_table_gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str = "gelu_tanh") -> torch.Tensor:
    """ggml's CPU GELU (ggml_vec_gelu_f32 / ggml_vec_geglu_f32 under GGML_GELU_FP16, the default): a table
    indexed by fp16(x) holding fp16(gelu_tanh), gelu(x) = fp16(gelu_tanh(fp16(x))) for -10 < x < 10 (0 below,
    x above), times `up` in float32 (GEGLU; PLE's gelu(gate) * per-layer input is the same product). The
    table here comes from torch's float32 gelu_tanh: 25 of its 37,376 entries in (-10, 10) are one fp16 step
    from ggml's (float32 ops with libm's tanhf, recomputed once), which moved no measured logit."""
    if activation not in ("gelu_tanh", "gelu_pytorch_tanh"):
        raise ValueError(activation)
    g = gate.float()
    table = torch.nn.functional.gelu(g.half().float(), approximate="tanh").half().float()
    act = torch.where(g <= -10, torch.zeros_like(g), torch.where(g >= 10, g, table))
    return (act * up.float()).to(gate.dtype)


@contextlib.contextmanager
def llamacpp_cpu_numerics(model, q8: bool = True, gelu: bool = True, f16_inputs=()):
    """Within the block `model` (loaded from a GGUF file) computes as llama.cpp's CPU backend does: q8 rounds
    the input of every quantized matmul (gemma4.ops.qgemm: QuantLinear, QuantExperts' two matmuls) and of the
    lm_head (the tied Q8_0 token embedding) with q8_0_round; gelu runs gemma4.ops.gated_activation (the
    MLPs, the experts, PLE's gate) through the fp16 table; the modules named in f16_inputs (F16 weights in
    the file) get their input rounded to fp16. Global: patches gemma4.ops for the duration (the experts'
    fused op too: it becomes common.experts_loop, its Python form, whose qgemm / gated_activation are these)."""
    import gemma4
    from tests.quant.common import experts_loop

    qgemm, gated, experts = gemma4.ops.qgemm, gemma4.ops.gated_activation, gemma4.ops.moe_experts_quant
    gemma4.ops.moe_experts_quant = experts_loop
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_pre_hook(lambda m, args: (args[0].half().to(args[0].dtype),))
             for name in f16_inputs]
    if q8:
        gemma4.ops.qgemm = lambda x, qweight, scales, bias=None: qgemm(q8_0_round(x), qweight, scales, bias)
        hooks.append(model.lm_head.register_forward_pre_hook(lambda m, args: (q8_0_round(args[0]),)))
    if gelu:
        gemma4.ops.gated_activation = fp16_table_gated_activation
    try:
        yield
    finally:
        gemma4.ops.qgemm, gemma4.ops.gated_activation, gemma4.ops.moe_experts_quant = qgemm, gated, experts
        for hook in hooks:
            hook.remove()


def our_logits_and_router(model, ids: list[int], numerics: dict | None = None):
    """Our float64 logits [len(ids), V] and router logits {layer: float64 [len(ids), E]} for one sequence,
    under llamacpp_cpu_numerics(model, **numerics) (None: our own numerics)."""
    router, hooks = {}, []
    for name, m in model.named_modules():
        if name.endswith(".router"):  # model.layers.<i>.router
            def keep(mod, args, out, layer=int(name.split(".")[2])):
                router[layer] = out.detach().double().reshape(-1, out.shape[-1])
            hooks.append(m.proj.register_forward_hook(keep))
    try:
        with torch.no_grad(), (llamacpp_cpu_numerics(model, **numerics) if numerics is not None
                               else contextlib.nullcontext()):
            logits = model(torch.tensor([ids])).logits[0].double()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, router
