r"""Gemma 4's token conventions, kept once: the special-token table and the chat template this package ships.

The special-token ids are those of Gemma 4's released tokenizers; the default model's
tokenizer (scripts/train_default_model.py) and the tokenizer tests build their vocabularies from this table.

GEMMA4_CHAT_TEMPLATE is a Gemma-4-style Jinja chat template written from the format description, not
copied from a released checkpoint: released checkpoints carry their own template (chat_template.jinja),
which always wins when present. It is the package data file default_model/chat_template.jinja (the
default model's own template), read once with importlib.resources; use it for models built from a config.

Format rendered:

    <bos>
    [<|turn>system\n [<|think|>\n if enable_thinking] [system text] [<|tool>{json}<tool|> per tool] <turn|>\n]
    <|turn>user\n{content}<turn|>\n
    <|turn>model\n{content}[<|tool_call>call:{name}{json arguments}<tool_call|>]<turn|>\n
    <|turn>tool\n<|tool_response>{content}<tool_response|><turn|>\n
    [<|turn>model\n if add_generation_prompt]

- The system turn is emitted when there is a system message, when enable_thinking is true, or
  when tools are given.
- The assistant role is rendered as "model". A "system" message anywhere but first is an error.
- Content is a string or a list of parts: {"type": "text", "text": ...}, and image/audio/video
  parts rendered as their placeholder tokens (<|image|>, <|audio|>, <|video|>) between blank lines.
- Thinking (<|channel>thought\n...<channel|>) in earlier model turns is dropped; the final
  message keeps it (so continue_final_message can prefill a thought).
- The template emits <bos> itself (bos_token), so the tokenizer must not add one
  (apply_chat_template tokenizes with add_special_tokens=False).
"""
from __future__ import annotations

from importlib import resources

__all__ = ["CONTROL_TOKENS", "NEWLINE_ID", "MULTIMODAL_TOKENS", "MODEL_SPECIFIC_TOKENS", "TURN_TOKENS", "TOOL_TOKENS",
           "GEMMA4_CHAT_TEMPLATE"]

# id -> token: Gemma 4's control tokens at their real ids. Ids below NEWLINE_ID not listed are <unusedN>.
CONTROL_TOKENS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
}
NEWLINE_ID = 107  # "\n" is a token of its own
TURN_TOKENS = ("<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>")
TOOL_TOKENS = tuple(CONTROL_TOKENS[i] for i in range(46, 53))
# Multimodal placeholders (their real ids are about 256k; small vocabularies put them after NEWLINE_ID).
MULTIMODAL_TOKENS = ("<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>", "<|video|>")
# tokenizer_config.json's model-specific special tokens (attribute name -> token)
MODEL_SPECIFIC_TOKENS = {
    "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
    "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>", "video_token": "<|video|>",
}

GEMMA4_CHAT_TEMPLATE = resources.files("gemma4.default_model").joinpath("chat_template.jinja").read_text("utf-8")
