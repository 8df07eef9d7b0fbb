"""Streamers receive exactly the text transformers' streamers produce for the same tokens, and the joined
text is the decoded generation."""
import threading

import pytest
import torch
from transformers import TextIteratorStreamer as HFTextIteratorStreamer
from transformers import TextStreamer as HFTextStreamer

from gemma4.generation import TextIteratorStreamer, TextStreamer

from .conftest import WINDOW, random_prompts

NEWLINE = 5  # "\n" in the test tokenizer


def _pieces(streamer_cls, tokenizer, chunks, **kwargs):
    out = []

    class Recorder(streamer_cls):
        def on_finalized_text(self, text, stream_end=False):
            out.append((text, stream_end))

    s = Recorder(tokenizer, **kwargs)
    for c in chunks:
        s.put(c)
    s.end()
    return out


@pytest.mark.parametrize("kwargs", [{}, {"skip_prompt": True}, {"skip_prompt": True, "skip_special_tokens": True}])
def test_text_pieces_equal_transformers(tokenizers_pair, kwargs):
    """Random tokens incl. newlines, CJK characters and special tokens, fed one at a time."""
    ours_tok, hf_tok = tokenizers_pair
    prompt = torch.tensor([[2, 100, 200, 300]])
    tokens = torch.randint(0, 512, (60,))
    tokens[::7] = NEWLINE
    tokens[3], tokens[4], tokens[20] = 6, 7, 6  # 中 文
    chunks = [prompt] + [t.reshape(1) for t in tokens]
    got = _pieces(TextStreamer, ours_tok, chunks, **kwargs)
    want = _pieces(HFTextStreamer, hf_tok, chunks, **kwargs)
    assert got == want
    assert any(text for text, _ in got)


def test_text_streamer_prints_like_transformers(e2b, tokenizers_pair, capsys):
    hf, ours, _ = e2b
    ours_tok, hf_tok = tokenizers_pair
    ids, _, _ = random_prompts([WINDOW + 2])
    kw = dict(max_new_tokens=25, do_sample=False, eos_token_id=None)
    ours.generate(ids, streamer=TextStreamer(ours_tok), **kw)
    got = capsys.readouterr().out
    hf.generate(ids, streamer=HFTextStreamer(hf_tok), **kw)
    want = capsys.readouterr().out
    assert got == want and got.strip()


def test_iterator_streamer_yields_the_decoded_generation(e2b, tokenizers_pair):
    """generate in a thread, text read as it comes: the pieces join to the decoded new tokens."""
    hf, ours, _ = e2b
    ours_tok, hf_tok = tokenizers_pair
    ids, _, _ = random_prompts([WINDOW + 3])
    kw = dict(max_new_tokens=30, do_sample=False, eos_token_id=None, suppress_tokens=[NEWLINE])
    streamer = TextIteratorStreamer(ours_tok, skip_prompt=True, timeout=120, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ids", ours.generate(ids, streamer=streamer, **kw)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    new = result["ids"][0, ids.shape[1]:]
    assert "".join(pieces) == ours_tok.decode(new.tolist(), skip_special_tokens=True)

    hf_streamer = HFTextIteratorStreamer(hf_tok, skip_prompt=True, timeout=120, skip_special_tokens=True)
    thread = threading.Thread(target=lambda: hf.generate(ids, streamer=hf_streamer, **kw))
    thread.start()
    hf_pieces = list(hf_streamer)
    thread.join()
    assert pieces == hf_pieces


def test_text_streamer_rejects_batches(e2b, tokenizers_pair):
    _, ours, _ = e2b
    ids, mask, _ = random_prompts([5, 4])
    with pytest.raises(ValueError, match="batch size 1"):
        ours.generate(ids, attention_mask=mask, max_new_tokens=3, streamer=TextStreamer(tokenizers_pair[0]))
