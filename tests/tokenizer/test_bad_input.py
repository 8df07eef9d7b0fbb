"""Broken tokenizer files, hostile chat templates and bad ids: one clear error naming the file and the key.

Each case edits one key of a freshly built tokenizer folder (fixtures.build) and checks that loading fails
with a TokenizerLoadError whose one-line message names the file and the key, and that the untouched folder
still loads (so the edit, not the fixture, is what fails).
"""
from __future__ import annotations

import json
import time

import jinja2
import pytest

from gemma4.errors import ArgumentError, Gemma4Error
from gemma4.tokenization import AutoTokenizer, ChatTemplateError, TokenizerLoadError
from gemma4.tokenization.chat_template import MAX_RENDERED_CHARS, render_chat_template
from tests.tokenizer import fixtures

CHAT = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "gemma"
    fixtures.build("gemma", str(d))
    return d


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_json(path, edit):
    data = json.loads(path.read_text(encoding="utf-8"))
    data = edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _set_vocab(value):
    def edit(d):
        d["model"]["vocab"] = value
        return d
    return edit


def _set_merges(value):
    def edit(d):
        d["model"]["merges"] = value
        return d
    return edit


def _decoder_key(d):
    entries = d["added_tokens_decoder"]
    first = next(iter(entries))
    entries["seven"] = entries.pop(first)
    return d


CASES = [  # (file, edit, words the message must hold)
    ("tokenizer.json", lambda d: [d], ["tokenizer.json", "JSON object"]),
    ("tokenizer.json", _set_vocab(5), ["tokenizer.json", "model.vocab"]),
    ("tokenizer.json", _set_merges([["a", "b", "c"]]), ["tokenizer.json", "model.merges[0]"]),
    ("tokenizer.json", _set_merges("a b"), ["tokenizer.json", "model.merges"]),
    ("tokenizer_config.json", lambda d: [d], ["tokenizer_config.json", "JSON object"]),
    ("tokenizer_config.json", _decoder_key, ["tokenizer_config.json", "added_tokens_decoder.seven"]),
    ("tokenizer_config.json", lambda d: {**d, "added_tokens_decoder": {"3": 7}},
     ["tokenizer_config.json", "added_tokens_decoder.3"]),
    ("tokenizer_config.json", lambda d: {**d, "chat_template": 5}, ["tokenizer_config.json", "chat_template"]),
    ("tokenizer_config.json", lambda d: {**d, "bos_token": 5}, ["tokenizer_config.json", "bos_token"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_broken_file_names_file_and_key(gemma_dir, tmp_path, case):
    filename, edit, words = CASES[case]
    AutoTokenizer.from_pretrained(str(gemma_dir))  # the fixture itself loads
    d = _copy(gemma_dir, tmp_path / "broken")
    (d / "chat_template.jinja").unlink(missing_ok=True)  # so that tokenizer_config.json's template is read
    _edit_json(d / filename, edit)
    with pytest.raises(TokenizerLoadError) as info:
        AutoTokenizer.from_pretrained(str(d))
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_template_syntax_error_names_file(gemma_dir, tmp_path):
    d = _copy(gemma_dir, tmp_path / "syntax")
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }", encoding="utf-8")
    with pytest.raises(TokenizerLoadError, match=r"chat_template\.jinja.*chat_template.*syntax error at line 1"):
        AutoTokenizer.from_pretrained(str(d))


def test_template_passed_at_call_is_checked(gemma_dir):
    tok = AutoTokenizer.from_pretrained(str(gemma_dir))
    with pytest.raises(ChatTemplateError, match="syntax error"):
        tok.apply_chat_template(CHAT, chat_template="{% if %}", tokenize=False)
    # raise_exception keeps transformers' exception type (jinja2.TemplateError) and is a gemma4 error
    with pytest.raises(jinja2.TemplateError, match="boom") as info:
        tok.apply_chat_template(CHAT, chat_template="{{ raise_exception('boom') }}", tokenize=False)
    assert isinstance(info.value, Gemma4Error)


@pytest.mark.parametrize("template", [
    "{{ 'a' * 10**10 }}",
    "{{ 10**10 * 'ab' }}",
    "{{ ['x'] * 10**9 }}",
    "{{ 'a'.ljust(10**10) }}",
    "{{ 'a'|center(10**10) }}",
    "{{ 7 ** 1000000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'abcdefgh' }}{% endfor %}{% endfor %}",
])
def test_template_output_is_bounded(template):
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=f"{MAX_RENDERED_CHARS:,}|digits"):
        render_chat_template([CHAT], template)
    assert time.perf_counter() - t0 < 60


def test_bounded_template_still_renders_large_but_sane_output():
    text, _ = render_chat_template([CHAT], "{{ 'ab' * 1000 }}{{ messages[0].content * 3 }}")
    assert text == ["ab" * 1000 + "Hello there" * 3]


def test_decode_refuses_bad_ids(gemma_dir):
    tok = AutoTokenizer.from_pretrained(str(gemma_dir))
    ids = tok("Hello there")["input_ids"]
    assert tok.decode(ids) == tok.decode(list(ids))  # valid ids still decode
    for bad in ([-1], [5, -7], [2**40]):
        with pytest.raises(ArgumentError, match=str(bad[-1])):
            tok.decode(bad)
        with pytest.raises(ArgumentError, match=str(bad[-1])):
            tok.convert_ids_to_tokens(bad)
    with pytest.raises(TypeError, match="not an integer"):
        tok.decode([1.5])
