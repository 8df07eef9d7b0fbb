"""Chat-template rendering with jinja2, reproducing transformers 5.17's renderer.

What transformers does, and this module does the same way:

- an ImmutableSandboxedEnvironment with trim_blocks=True and lstrip_blocks=True and the
  jinja2.ext.loopcontrols extension ({% break %}, {% continue %});
- a `tojson` filter that does NOT escape HTML (plain json.dumps, ensure_ascii=False by default)
  and accepts ensure_ascii, indent, separators and sort_keys;
- globals `raise_exception(message)` (raises jinja2.TemplateError) and `strftime_now(format)`;
- a `{% generation %}...{% endgeneration %}` block that renders its body and, when assistant masks
  are requested, records the character span of the body;
- variables: messages, tools (dicts, or Python functions converted to JSON schemas), documents,
  add_generation_prompt, every named special token (bos_token, eos_token, ...) and any extra
  keyword (enable_thinking, ...), extras overriding special tokens;
- continue_final_message: the final message's content (or the named field) gets a marker
  appended before rendering and the rendered text is cut at the marker.

One addition: a template runs with bounded memory. A string or list built by `*` or `+` and the rendered
text may hold at most MAX_RENDERED_CHARS characters, `**` at most MAX_POWER_DIGITS digits
(`{{ 'a' * 10**10 }}` would otherwise ask for 10 GB). Jinja's sandbox already caps range() at 100 000
items. Every template failure (syntax, raise_exception, a sandbox refusal, a bound) is a ChatTemplateError.
"""
from __future__ import annotations

import inspect
import json
import math
import re
import types
from collections.abc import Callable
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma4.errors import Gemma4Error

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
MAX_RENDERED_CHARS = 1 << 24  # 16 M characters: far above any prompt a model reads, far below a failed malloc
MAX_POWER_DIGITS = 10_000


class ChatTemplateError(Gemma4Error, jinja2.exceptions.TemplateError):
    """A chat template that does not compile, raises, or asks for more than the bounds allow."""


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with `*`, `+` and `**` checked before they run, so that no expression can allocate
    more than MAX_RENDERED_CHARS items (or a number of more than MAX_POWER_DIGITS digits)."""

    intercepted_binops = frozenset(["*", "+", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > \
                        MAX_RENDERED_CHARS:
                    raise ChatTemplateError(f"chat template: {type(seq).__name__} * {times} would hold "
                                            f"{len(seq) * times:,} items, more than the {MAX_RENDERED_CHARS:,} "
                                            "a template may produce")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and \
                    len(left) + len(right) > MAX_RENDERED_CHARS:
                raise ChatTemplateError(f"chat template: a concatenation would hold more than the "
                                        f"{MAX_RENDERED_CHARS:,} items a template may produce")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and \
                abs(left) > 1 and right * math.log10(abs(left)) > MAX_POWER_DIGITS:
            raise ChatTemplateError(f"chat template: {left} ** {right} has more than {MAX_POWER_DIGITS} digits")
        return super().call_binop(context, operator, left, right)

    def call(self, context, obj, *args, **kwargs):
        # str/list methods that take a size ('x'.ljust(n), .center, .zfill, ...): bound the size
        if isinstance(getattr(obj, "__self__", None), (str, list, tuple)):
            _check_sizes(args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _check_sizes(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_RENDERED_CHARS:
            raise ChatTemplateError(f"chat template: a size of {value:,} is more than the {MAX_RENDERED_CHARS:,} "
                                    "characters a template may produce")


def _sized_filter(name: str):
    """A builtin filter taking a width (center, indent, wordwrap), with the width bounded."""
    base = jinja2.filters.FILTERS[name]

    @wraps(base)  # keeps jinja's pass_environment marker (wordwrap)
    def bounded(*args, **kwargs):
        _check_sizes(args[1:], kwargs)
        return base(*args, **kwargs)

    return bounded


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------
class _GenerationTracker(jinja2.ext.Extension):
    """{% generation %} ... {% endgeneration %}: renders the body; records its character span when active."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        environment.extend(activate_tracker=self.activate_tracker)
        self._blocks: list[str] | None = None
        self._spans: list[tuple[int, int]] | None = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_generation"), [], [], body).set_lineno(lineno)

    def _render_generation(self, caller):
        text = caller()
        if self._blocks is not None:
            start = len("".join(self._blocks))
            self._spans.append((start, start + len(text)))
        return text

    @contextmanager
    def activate_tracker(self, blocks: list[str], spans: list[tuple[int, int]]):
        if self._blocks is not None:
            raise ValueError("the generation tracker is already active")
        self._blocks, self._spans = blocks, spans
        try:
            yield
        finally:
            self._blocks, self._spans = None, None


def _raise_exception(message):
    raise ChatTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want the plain JSON text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):  # noqa: A002 - the name templates use
    return datetime.now().strftime(format)


@lru_cache(maxsize=64)
def compile_template(template: str) -> jinja2.Template:
    """Compiles a chat template (cached per template string)."""
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                              extensions=[_GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    for name in ("center", "indent", "wordwrap"):
        env.filters[name] = _sized_filter(name)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template is a string of Jinja, got {type(template).__name__}")
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None


def _bounded(pieces):
    """A template's output stream, refused once it goes past MAX_RENDERED_CHARS."""
    size = 0
    for piece in pieces:
        size += len(piece)
        if size > MAX_RENDERED_CHARS:
            raise ChatTemplateError(f"chat template: the rendered text exceeds {MAX_RENDERED_CHARS:,} characters")
        yield piece


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def render_chat_template(conversations: list, chat_template: str, tools: list | None = None,
                         documents: list | None = None, add_generation_prompt: bool = False,
                         continue_final_message: bool | str = False, return_assistant_tokens_mask: bool = False,
                         **template_kwargs) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Renders each conversation; returns (texts, generation spans per conversation)."""
    template = compile_template(chat_template)
    tool_schemas = None
    if tools is not None:
        tool_schemas = []
        for tool in tools:
            if isinstance(tool, dict):
                tool_schemas.append(tool)
            elif inspect.isfunction(tool) or inspect.ismethod(tool):
                tool_schemas.append(get_json_schema(tool))
            else:
                raise ValueError("Tools should either be a JSON schema, or a callable function with type hints "
                                 "and a docstring suitable for auto-conversion to a schema.")
    if documents is not None:
        for document in documents:
            if not isinstance(document, dict):
                raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")

    rendered, all_spans = [], []
    for chat in conversations:
        if hasattr(chat, "messages"):
            chat = chat.messages
        final_message = None
        if continue_final_message:
            chat = deepcopy(chat)
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final_message = chat[-1].get(field)
            if final_message is None:
                raise ValueError(f'continue_final_message is set but the final message has no "{field}" to continue!')
            if field not in chat_template:
                raise ValueError(f'continue_final_message is set to "{field}" but this is not an accepted field in '
                                 "the chat_template")
            if isinstance(final_message, (list, tuple)):
                for block in reversed(final_message):
                    if "text" in block:
                        final_message = block["text"]
                        block["text"] = block["text"] + _CONTINUE_TAG
                        break
                else:
                    raise ValueError("continue_final_message is set but we could not find any text to continue in "
                                     "the final message!")
            else:
                chat[-1][field] = chat[-1][field] + _CONTINUE_TAG
        kwargs = dict(messages=chat, tools=tool_schemas, documents=documents,
                      add_generation_prompt=add_generation_prompt, **template_kwargs)
        try:
            if return_assistant_tokens_mask:
                blocks: list[str] = []
                spans: list[tuple[int, int]] = []
                with template.environment.activate_tracker(blocks, spans):
                    for block in _bounded(template.generate(**kwargs)):
                        blocks.append(block)
                    text = "".join(blocks)
                all_spans.append(spans)
            else:
                text = "".join(_bounded(template.generate(**kwargs)))
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:  # sandbox refusals, undefined-variable errors, ...
            raise ChatTemplateError(f"chat template: {e}") from None
        if continue_final_message:
            tag = _CONTINUE_TAG.strip()
            if final_message.strip() not in text or tag not in text:
                raise ValueError(
                    "continue_final_message is set but the final message does not appear in the chat after "
                    "applying the chat template! This can happen if the chat template deletes portions of the "
                    "final message. Please verify the chat template and final message in your chat to ensure they "
                    f"are compatible.Final message to continue: {final_message.strip()}\nRendered chat:\n{text}")
            loc = text.rindex(tag)
            if text[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                text = text[:loc]  # the template kept the spacing after the marker
            else:
                text = text[:loc].rstrip()  # trailing spacing was trimmed: trim ours as well
        rendered.append(text)
    return rendered, all_spans


# ----------------------------------------------------------------------------------------------
# Python functions as tools: JSON schema from type hints and a Google-style docstring
# ----------------------------------------------------------------------------------------------
class TypeHintParsingException(Exception):
    """A type hint that has no JSON-schema equivalent."""


class DocstringParsingException(Exception):
    """A docstring without the description of an argument (or without a docstring at all)."""


_DESCRIPTION_RE = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS_RE = re.compile(r"\n\s*Args:\n\s*(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARG_SPLIT_RE = re.compile(r"(?:^|\n)\s*(\w+):\s*(.*?)\s*(?=\n\s*\w+:|\Z)", re.DOTALL)
_RETURNS_RE = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)


def _basic_type_schema(tp) -> dict:
    mapping = {int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
               bool: {"type": "boolean"}, type(None): {"type": "null"}, Any: {}}
    if tp in mapping:
        return dict(mapping[tp])
    try:
        import torch  # noqa: PLC0415
        if tp is torch.Tensor:
            return {"type": "audio"}
    except ImportError:
        pass
    if getattr(tp, "__module__", "").startswith("PIL") and getattr(tp, "__name__", "") == "Image":
        return {"type": "image"}
    return {"type": "object"}


def _type_hint_schema(hint) -> dict:
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        return _basic_type_schema(hint)
    if origin is Union or origin is types.UnionType:
        subtypes = [_type_hint_schema(t) for t in args if t is not type(None)]
        if len(subtypes) == 1:
            out = subtypes[0]
        elif all("type" in s and isinstance(s["type"], str) for s in subtypes):
            out = {"type": sorted(s["type"] for s in subtypes)}
        else:
            out = {"anyOf": subtypes}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is Literal and args:
        kinds = []
        for a in args:
            if type(a) not in (int, float, str, bool, type(None)):
                raise TypeHintParsingException("Only the valid python literals can be listed in typing.Literal.")
            k = _basic_type_schema(type(a)).get("type")
            if k is not None and k not in kinds:
                kinds.append(k)
        return {"type": kinds.pop() if len(kinds) == 1 else list(kinds), "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1:
            raise TypeHintParsingException(f"The type hint {str(hint).replace('typing.', '')} is a Tuple with a "
                                           "single element; use list[] or the element type instead.")
        if ... in args:
            raise TypeHintParsingException("Conversion of '...' is not supported in Tuple type hints. Use list[] "
                                           "types for variable-length inputs instead.")
        return {"type": "array", "prefixItems": [_type_hint_schema(t) for t in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _type_hint_schema(args[1])
        return out
    raise TypeHintParsingException("Couldn't parse this type hint, likely due to a custom class or object: ", hint)


def get_json_schema(func: Callable) -> dict:
    """JSON schema of a function for the `tools` argument: name, description, typed parameters.

    Needs a Google-style docstring describing every argument and type hints on every argument
    (an optional "(choices: [...])" at the end of a description becomes an enum).
    """
    doc = inspect.getdoc(func)
    name = getattr(func, "__name__", "operation")
    if not doc:
        raise DocstringParsingException(f"Cannot generate JSON schema for {name} because it has no docstring!")
    doc = doc.strip()
    m = _DESCRIPTION_RE.search(doc)
    description = m.group(1).strip() if m else None
    m = _ARGS_RE.search(doc)
    args_block = m.group(1).strip() if m else None
    m = _RETURNS_RE.search(doc)
    returns_doc = m.group(1).strip() if m else None
    arg_docs = {}
    if args_block is not None:
        args_block = "\n".join(line for line in args_block.split("\n") if line.strip())
        arg_docs = {k: re.sub(r"\s*\n+\s*", " ", v.strip()) for k, v in _ARG_SPLIT_RE.findall(args_block)}

    hints = get_type_hints(func)
    signature = inspect.signature(func)
    first = next(iter(signature.parameters), None)
    implicit = first if (first in {"self", "cls"}
                         and signature.parameters[first].annotation == inspect.Parameter.empty) else None
    required = []
    for pname, param in signature.parameters.items():
        if pname == implicit:
            continue
        if param.annotation == inspect.Parameter.empty:
            raise TypeHintParsingException(f"Argument {param.name} is missing a type hint in function {name}")
        if param.default == inspect.Parameter.empty:
            required.append(pname)
    properties = {pname: _type_hint_schema(tp) for pname, tp in hints.items() if pname != implicit}
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required

    return_schema = parameters["properties"].pop("return", None)
    if return_schema is not None and returns_doc is not None:
        return_schema["description"] = returns_doc
    for arg, schema in parameters["properties"].items():
        if arg not in arg_docs:
            raise DocstringParsingException(f"Cannot generate JSON schema for {name} because the docstring has no "
                                            f"description for the argument '{arg}'")
        desc = arg_docs[arg]
        choices = re.search(r"\(choices:\s*(.*?)\)\s*$", desc, flags=re.IGNORECASE)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            desc = choices.string[: choices.start()].strip()
        schema["description"] = desc
    out = {"name": name, "description": description, "parameters": parameters}
    if return_schema is not None:
        out["return"] = return_schema
    return {"type": "function", "function": out}
