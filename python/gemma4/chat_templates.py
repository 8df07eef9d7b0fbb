"""Chat templates shipped with gemma4.

GEMMA4_CHAT_TEMPLATE is a Gemma-4-style Jinja chat template written from the format description in
docs (gemma4-architecture.md section 4), not copied from a released checkpoint: released
checkpoints carry their own template (chat_template.jinja), which always wins when present. This
one is for models built from a config (demo models, tests) that have no template of their own.

Format rendered:

    <bos>
    [<|turn>system\\n [<|think|>\\n if enable_thinking] [system text] [<|tool>{json}<tool|> per tool] <turn|>\\n]
    <|turn>user\\n{content}<turn|>\\n
    <|turn>model\\n{content}[<|tool_call>call:{name}{json arguments}<tool_call|>]<turn|>\\n
    <|turn>tool\\n<|tool_response>{content}<tool_response|><turn|>\\n
    [<|turn>model\\n if add_generation_prompt]

- The system turn is emitted when there is a system message, when enable_thinking is true, or
  when tools are given.
- The assistant role is rendered as "model". A "system" message anywhere but first is an error.
- Content is a string or a list of parts: {"type": "text", "text": ...}, and image/audio/video
  parts rendered as their placeholder tokens (<|image|>, <|audio|>, <|video|>) between blank lines.
- Thinking (<|channel>thought\\n...<channel|>) in earlier model turns is dropped; the final
  message keeps it (so continue_final_message can prefill a thought).
- The template emits <bos> itself (bos_token), so the tokenizer must not add one
  (apply_chat_template tokenizes with add_special_tokens=False).
"""

GEMMA4_CHAT_TEMPLATE = r"""{%- macro render_content(content) -%}
    {%- if content is none -%}
    {%- elif content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part['type'] == 'text' -%}
                {{- part['text'] -}}
            {%- elif part['type'] in ('image', 'image_url') -%}
                {{- '\n\n<|image|>\n\n' -}}
            {%- elif part['type'] == 'audio' -%}
                {{- '\n\n<|audio|>\n\n' -}}
            {%- elif part['type'] == 'video' -%}
                {{- '\n\n<|video|>\n\n' -}}
            {%- else -%}
                {{- raise_exception('Unsupported content part type: ' + part['type']) -}}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- raise_exception('Message content must be a string or a list of parts') -}}
    {%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = none -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if system_message is not none or enable_thinking or tools -%}
    {{- '<|turn>system\n' -}}
    {%- if enable_thinking -%}
        {{- '<|think|>\n' -}}
    {%- endif -%}
    {{- render_content(system_message) -}}
    {%- if tools -%}
        {%- for tool in tools -%}
            {{- '<|tool>' + (tool | tojson) + '<tool|>' -}}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'system' -%}
        {{- raise_exception('A system message may only come first') -}}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\n' -}}
    {%- if role == 'tool' -%}
        {{- '<|tool_response>' -}}
        {{- render_content(message['content']) -}}
        {{- '<tool_response|>' -}}
    {%- elif role == 'model' and not loop.last and message['content'] is string and '<channel|>' in message['content'] -%}
        {{- message['content'].split('<channel|>')[-1] | trim -}}
    {%- else -%}
        {{- render_content(message['content']) -}}
    {%- endif -%}
    {%- if message['tool_calls'] is defined and message['tool_calls'] -%}
        {%- for call in message['tool_calls'] -%}
            {%- set fn = call['function'] if call['function'] is defined else call -%}
            {{- '<|tool_call>call:' + fn['name'] -}}
            {%- if fn['arguments'] is string -%}
                {{- fn['arguments'] -}}
            {%- else -%}
                {{- fn['arguments'] | tojson -}}
            {%- endif -%}
            {{- '<tool_call|>' -}}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
{%- endif -%}
"""

__all__ = ["GEMMA4_CHAT_TEMPLATE"]
