"""Stopping: EOS lists, stop strings (against transformers' StopStringCriteria and generate), custom
criteria."""
import pytest
import torch
from transformers.generation.stopping_criteria import StopStringCriteria as HFStopStringCriteria

from gemma4.generation import (EosTokenCriteria, MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList,
                               StopStringCriteria)

from .conftest import WINDOW, random_prompts


def test_eos_and_max_length_criteria():
    ids = torch.tensor([[5, 6, 1], [5, 6, 7], [5, 6, 106]])
    assert EosTokenCriteria([1, 106])(ids, None).tolist() == [True, False, True]
    assert EosTokenCriteria(7)(ids, None).tolist() == [False, True, False]
    both = StoppingCriteriaList([EosTokenCriteria(1), MaxLengthCriteria(3)])
    assert both(ids, None).tolist() == [True, True, True] and both.max_length == 3


STOPS = ["stop", "op", "end!", " la", "\nab", "中文"]


def test_stop_string_tables_and_matches_equal_transformers(tokenizers_pair):
    ours_tok, hf_tok = tokenizers_pair
    ours = StopStringCriteria(ours_tok, STOPS)
    theirs = HFStopStringCriteria(hf_tok, STOPS)
    assert torch.equal(ours.embedding_vec, theirs.embedding_vec)
    ids = torch.randint(0, 512, (300, 9))
    cases = {"a stop": True, "x st op": True, "opera": True, "ends end!": True, "the la": True, "q\nab": True,
             "中文": True, "sto pper": False, "q\nabc": False, "stop it": False, "nothing": False}
    for i, text in enumerate(cases):  # constructed rows that end with (or just after) stop strings
        enc = ours_tok(text, add_special_tokens=False)["input_ids"][-9:]
        ids[i, -len(enc):] = torch.tensor(enc)
    got, want = ours(ids, None), theirs(ids, None)
    assert torch.equal(got, want)
    assert got[:len(cases)].tolist() == list(cases.values())


def test_stop_string_spanning_tokens(tokenizers_pair):
    ours_tok, _ = tokenizers_pair
    vocab = ours_tok.get_vocab()
    crit = StopStringCriteria(ours_tok, ["stop"])

    def row(*tokens):
        return torch.tensor([[vocab[t] for t in tokens]])

    assert crit(row("a", "st", "op"), None).item()        # split over two tokens
    assert crit(row("a", "st", "opera"), None).item()     # the last token overhangs the string
    assert crit(row("▁stop"), None).item()
    assert not crit(row("stop", "a"), None).item()        # the match must reach the newest token
    assert not crit(row("st", "a", "op"), None).item()


def _text(tok, ids):
    return tok.decode(ids.tolist(), skip_special_tokens=True)


def _stop_ends_in_last_token(tok, ids, stop):
    """Whether some occurrence of `stop` in the text of `ids` ends inside the text of the last token."""
    text, before = _text(tok, ids), len(_text(tok, ids[:-1]))
    at = text.find(stop)
    while at != -1:
        if at + len(stop) > before:
            return True
        at = text.find(stop, at + 1)
    return False


def test_generate_stops_at_stop_strings_like_transformers(e2b, tokenizers_pair):
    hf, ours, _ = e2b
    ours_tok, hf_tok = tokenizers_pair
    ids, _, _ = random_prompts([WINDOW + 3])
    L = ids.shape[1]
    free = ours.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None)
    # a stop string made of the text of new tokens 8 and 9 (it spans a token boundary)
    stop = ours_tok.decode(free[0, L + 8:L + 10].tolist()).strip()
    assert stop
    kw = dict(max_new_tokens=30, do_sample=False, eos_token_id=None, stop_strings=[stop, "@@never@@"])
    got = ours.generate(ids, tokenizer=ours_tok, **kw)
    want = hf.generate(ids, tokenizer=hf_tok, **kw)
    assert torch.equal(got, want)
    assert got.shape[1] <= L + 10
    # generation stopped at the first new token inside which the stop string ends (the string may start in,
    # or already occur in, the prompt)
    assert _stop_ends_in_last_token(ours_tok, got[0], stop)
    assert not any(_stop_ends_in_last_token(ours_tok, got[0, :k], stop) for k in range(L + 1, got.shape[1]))


def test_custom_stopping_criteria(e2b):
    _, ours, _ = e2b
    ids, _, _ = random_prompts([6])
    free = ours.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    target = int(free[0, 6 + 5])

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == target

    out = ours.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                        stopping_criteria=StoppingCriteriaList([StopAt()]))
    stop = free[0, 6:].tolist().index(target)
    assert torch.equal(out, free[:, :6 + stop + 1])


def test_stop_strings_need_known_characters(tokenizers_pair):
    ours_tok, _ = tokenizers_pair
    with pytest.raises(ValueError, match="unable to identify tokens"):
        StopStringCriteria(ours_tok, ["ЖЖ"])
