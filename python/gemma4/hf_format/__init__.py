"""Hugging Face's on-disk formats, in one place (torchtitan's state-dict-adapter idea).

  config_json   config.json <-> Gemma4Config (nested Gemma4ForConditionalGeneration and flat
                Gemma4ForCausalLM forms, per_layer_config); the one small-JSON-file reader
  keys          checkpoint / adapter names <-> ours (both layouts), the multimodal skip list,
                PEFT's prefix and root detection
  safetensors   the one safetensors reader (validated header, plain reads, NaN/inf check) and writer

gemma4.checkpoint (model checkpoints), gemma4.lora.io (PEFT adapters) and gemma4.config use it.
"""
