"""Our logits processors give exactly transformers 5.17's scores on random logits, alone and as the list
generate builds for a set of options."""
import pytest
import torch
import transformers.generation.logits_process as T
from transformers import GenerationConfig as HFGenerationConfig

import gemma4.generation.logits_process as G
from gemma4.generation import GenerationConfig
from gemma4.generation.utils import _get_logits_processor

B, V = 4, 512


def _inputs(ties: bool = False):
    scores = torch.randn(B, V) * 3
    if ties:  # repeated values exercise the tie rules of top-k / top-p
        scores = (scores * 2).round() / 2
    scores[0, :5] = -float("inf")  # already filtered entries
    ids = torch.randint(0, V, (B, 17))
    return ids, scores


CASES = [
    ("TemperatureLogitsWarper", (0.7,), {}),
    ("TemperatureLogitsWarper", (1.9,), {}),
    ("RepetitionPenaltyLogitsProcessor", (1.3,), {}),
    ("RepetitionPenaltyLogitsProcessor", (0.8,), {}),
    ("RepetitionPenaltyLogitsProcessor", (1.5,), {"prompt_ignore_length": 5}),
    ("TopKLogitsWarper", (1,), {}),
    ("TopKLogitsWarper", (40,), {}),
    ("TopKLogitsWarper", (10,), {"min_tokens_to_keep": 20}),
    ("TopKLogitsWarper", (5000,), {}),
    ("TopPLogitsWarper", (0.9,), {}),
    ("TopPLogitsWarper", (0.3,), {"min_tokens_to_keep": 3}),
    ("TopPLogitsWarper", (0.0,), {}),
    ("MinPLogitsWarper", (0.05,), {}),
    ("MinPLogitsWarper", (0.5,), {"min_tokens_to_keep": 4}),
    ("TypicalLogitsWarper", (0.8,), {}),
    ("EpsilonLogitsWarper", (3e-3,), {}),
    ("EtaLogitsWarper", (3e-3,), {}),
    ("NoRepeatNGramLogitsProcessor", (2,), {}),
    ("MinLengthLogitsProcessor", (30, [1, 7]), {}),
    ("MinLengthLogitsProcessor", (10, 1), {}),
    ("MinNewTokensLengthLogitsProcessor", (10, 9, [1, 106]), {}),
    ("SuppressTokensLogitsProcessor", ([3, 9, 400],), {}),
    ("SuppressTokensAtBeginLogitsProcessor", ([3, 9], 17), {}),
    ("ForcedEOSTokenLogitsProcessor", (18, [1, 2]), {}),
    ("InfNanRemoveLogitsProcessor", (), {}),
    ("LogitNormalization", (), {}),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name,args,kwargs", CASES, ids=[f"{c[0]}{c[1]}{c[2]}" for c in CASES])
def test_processor_equals_transformers(name, args, kwargs, ties):
    ids, scores = _inputs(ties)
    if name == "NoRepeatNGramLogitsProcessor":
        ids[:, 10:12] = ids[:, -1:].expand(-1, 2)  # make some bigrams complete
    if name == "InfNanRemoveLogitsProcessor":
        scores[1, 7] = float("nan")
        scores[2, 8] = float("inf")
    want = getattr(T, name)(*args, **kwargs)(ids, scores.clone())
    got = getattr(G, name)(*args, **kwargs)(ids, scores.clone())
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_forced_bos_equals_transformers():
    scores = torch.randn(B, V)
    ids = torch.randint(0, V, (B, 1))
    assert torch.equal(G.ForcedBOSTokenLogitsProcessor(2)(ids, scores), T.ForcedBOSTokenLogitsProcessor(2)(ids, scores))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature"):
        G.TemperatureLogitsWarper(0.0)
    with pytest.raises(ValueError, match="top_k"):
        G.TopKLogitsWarper(0)
    with pytest.raises(ValueError, match="top_p"):
        G.TopPLogitsWarper(1.5)
    with pytest.raises(ValueError, match="min_p"):
        G.MinPLogitsWarper(2.0)
    with pytest.raises(ValueError, match="penalty"):
        G.RepetitionPenaltyLogitsProcessor(-1.0)


OPTION_SETS = [
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    dict(do_sample=True, top_k=64, top_p=0.95),  # Gemma 4 -it defaults
    dict(do_sample=True, min_p=0.1, repetition_penalty=1.2, top_k=0),
    dict(do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=4, eos_token_id=[1, 106]),
    dict(do_sample=True, typical_p=0.8, epsilon_cutoff=1e-3, suppress_tokens=[5, 6], renormalize_logits=True),
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=[str(o) for o in OPTION_SETS])
def test_generate_processor_list_equals_transformers(options, e2b):
    """The list generate builds (order included) processes random logits exactly as transformers' does."""
    hf, _, _ = e2b
    input_len = 9
    eos = torch.tensor(options.get("eos_token_id", [1]))
    ours_config = GenerationConfig(**options)
    ours_config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    ours_list = _get_logits_processor(ours_config, input_len, eos, "cpu", None)
    hf_config = HFGenerationConfig(**options)
    hf_config.update(**HFGenerationConfig._get_default_generation_params(), defaults_only=True)
    hf_config._eos_token_tensor = eos
    hf_list = hf._get_logits_processor(hf_config, input_ids_seq_length=input_len, device="cpu")
    assert [type(p).__name__ for p in ours_list] == [type(p).__name__ for p in hf_list]
    for length in (input_len, input_len + 6):
        ids, scores = _inputs()
        ids = ids[:, :length] if length <= ids.shape[1] else torch.randint(0, V, (B, length))
        assert torch.equal(ours_list(ids, scores.clone()), hf_list(ids, scores.clone()))
