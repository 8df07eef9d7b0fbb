"""Logits processors and warpers, numerically identical to transformers 5.17's (same tensor operations).

Each processor is a callable `(input_ids [B, L] int64, scores [B, V] float) -> scores [B, V]`, runs on the
scores' device and never syncs with the host. `LogitsProcessorList` applies them in order; transformers'
own processors can be mixed in (they have the same call signature).
"""
from __future__ import annotations

import inspect
import math

import torch

__all__ = [
    "LogitsProcessor", "LogitsProcessorList", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "TemperatureLogitsWarper", "RepetitionPenaltyLogitsProcessor", "TopKLogitsWarper", "TopPLogitsWarper",
    "MinPLogitsWarper", "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper",
    "NoRepeatNGramLogitsProcessor", "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor", "InfNanRemoveLogitsProcessor",
    "LogitNormalization",
]


def _eos_tensor(eos_token_id, device) -> torch.Tensor:
    if isinstance(eos_token_id, torch.Tensor):
        return eos_token_id.to(device)
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    return torch.tensor(eos_token_id, device=device)


class LogitsProcessor:
    """Base class: `__call__(input_ids, scores) -> scores`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} is abstract")


class LogitsProcessorList(list):
    """Applies each processor in turn (extra keyword arguments go to processors that take them)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            params = inspect.signature(processor.__call__).parameters
            if len(params) > 2:
                missing = [a for a in list(params)[2:] if a not in kwargs]
                if missing:
                    raise ValueError(f"{type(processor).__name__} needs the argument(s) {missing}")
                scores = processor(input_ids, scores, **kwargs)
            else:
                scores = processor(input_ids, scores)
        return scores


class MinLengthLogitsProcessor(LogitsProcessor):
    """EOS scores -inf while the whole sequence (prompt included) is shorter than min_length."""

    def __init__(self, min_length: int, eos_token_id, device: str | torch.device = "cpu"):
        if not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"`min_length` has to be a non-negative integer, but is {min_length}")
        self.min_length = min_length
        self.eos_token_id = _eos_tensor(eos_token_id, device)

    def __call__(self, input_ids, scores):
        eos_mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), self.eos_token_id)
        if input_ids.shape[-1] < self.min_length:
            return torch.where(eos_mask, -math.inf, scores)
        return scores.clone()


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """EOS scores -inf while fewer than min_new_tokens tokens follow the prompt."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id,
                 device: str | torch.device = "cpu"):
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` has to be a positive integer, but is {value}")
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = _eos_tensor(eos_token_id, device)

    def __call__(self, input_ids, scores):
        eos_mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), self.eos_token_id)
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            return torch.where(eos_mask, -math.inf, scores)
        return scores.clone()


class TemperatureLogitsWarper(LogitsProcessor):
    """scores / temperature."""

    def __init__(self, temperature: float):
        if isinstance(temperature, int) and not isinstance(temperature, bool):
            temperature = float(temperature)
        if not isinstance(temperature, float) or not temperature > 0:
            msg = f"`temperature` (={temperature}) has to be a strictly positive float"
            if temperature == 0:
                msg += "; for greedy decoding set `do_sample=False`"
            raise ValueError(msg)
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Scores of tokens present in input_ids (prompt included, padding too, as transformers): divided by the
    penalty when positive, multiplied when negative."""

    def __init__(self, penalty: float, prompt_ignore_length: int | None = None):
        if isinstance(penalty, int) and not isinstance(penalty, bool):
            penalty = float(penalty)
        if not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        if prompt_ignore_length is not None and (not isinstance(prompt_ignore_length, int) or prompt_ignore_length < 0):
            raise ValueError(f"`prompt_ignore_length` has to be a positive integer, but is {prompt_ignore_length}")
        self.penalty = penalty
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids, scores):
        if self.prompt_ignore_length:
            input_ids = input_ids[:, self.prompt_ignore_length:]
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(1)
        score = torch.gather(scores, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return scores.scatter(1, input_ids, score)


class TopKLogitsWarper(LogitsProcessor):
    """Keep the top_k highest scores (ties with the k-th included); the rest become filter_value."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        top_k = min(self.top_k, scores.size(-1))
        to_remove = scores < torch.topk(scores, top_k)[0][..., -1, None]
        return scores.masked_fill(to_remove, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keep the smallest set of top tokens whose probabilities sum to >= top_p."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if top_p < 0 or top_p > 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_to_remove = cumulative_probs <= (1 - self.top_p)  # ascending: the low tail
        sorted_to_remove[..., -self.min_tokens_to_keep:] = 0
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


class MinPLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below min_p times the top token's probability."""

    def __init__(self, min_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not 0 <= min_p <= 1.0:
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
        self.min_p = min_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores, dim=-1)
        top_probs = probs.amax(dim=-1, keepdim=True)
        to_remove = probs < self.min_p * top_probs
        k = min(self.min_tokens_to_keep, probs.shape[-1])
        to_remove.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
        return scores.masked_fill(to_remove, self.filter_value)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling (keep tokens closest to the expected information content, mass `mass`)."""

    def __init__(self, mass: float = 0.9, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        mass = float(mass)
        if not 0 < mass < 1:
            raise ValueError(f"`typical_p` has to be a float > 0 and < 1, but is {mass}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
        self.filter_value = filter_value
        self.mass = mass
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        normalized = torch.nn.functional.log_softmax(scores, dim=-1)
        p = torch.exp(normalized)
        ent = -(normalized * p).nansum(-1, keepdim=True)
        shifted_scores = torch.abs((-normalized) - ent)
        sorted_scores, sorted_indices = torch.sort(shifted_scores, descending=False)
        sorted_logits = scores.gather(-1, sorted_indices)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        last_ind = (cumulative_probs < self.mass).sum(dim=1)
        last_ind.clamp_(max=sorted_scores.shape[-1] - 1)
        sorted_to_remove = sorted_scores > sorted_scores.gather(1, last_ind.view(-1, 1))
        sorted_to_remove[..., : self.min_tokens_to_keep] = 0
        to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
        return scores.masked_fill(to_remove, self.filter_value)


class EpsilonLogitsWarper(LogitsProcessor):
    """Drop tokens with probability below epsilon (keeping at least min_tokens_to_keep)."""

    def __init__(self, epsilon: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`epsilon_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}")
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        probabilities = scores.softmax(dim=-1)
        to_remove = probabilities < self.epsilon
        top_k = min(self.min_tokens_to_keep, scores.size(-1))
        to_remove = to_remove & (scores < torch.topk(scores, top_k)[0][..., -1, None])
        return scores.masked_fill(to_remove, self.filter_value)


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling: threshold min(epsilon, sqrt(epsilon) * exp(-entropy))."""

    def __init__(self, epsilon: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1,
                 device: str | torch.device = "cpu"):
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"`eta_cutoff` has to be a float > 0 and < 1, but is {epsilon}")
        min_tokens_to_keep = int(min_tokens_to_keep)
        if min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a strictly positive integer, but is {min_tokens_to_keep}")
        self.epsilon = torch.tensor(epsilon, device=device)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids, scores):
        probabilities = scores.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        eta = torch.min(self.epsilon, torch.sqrt(self.epsilon) * torch.exp(-entropy))[..., None]
        to_remove = probabilities < eta
        top_k = min(self.min_tokens_to_keep, scores.size(-1))
        to_remove = to_remove & (scores < torch.topk(scores, top_k)[0][..., -1, None])
        return scores.masked_fill(to_remove, self.filter_value)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Ban every token that would complete an n-gram already present in input_ids."""

    def __init__(self, ngram_size: int):
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, but is {ngram_size}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids, scores):
        cur_len = input_ids.shape[-1]
        if cur_len < self.ngram_size:
            return scores
        prefix = input_ids[:, cur_len + 1 - self.ngram_size:]
        windows = input_ids.unfold(dimension=1, size=self.ngram_size, step=1)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        vocab_size = scores.shape[-1]
        banned = scores.new_zeros((scores.shape[0], vocab_size + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1], vocab_size), True)  # spare column for non-matches
        return scores.masked_fill(banned[:, :vocab_size], -float("inf"))


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Scores of the listed tokens -inf at every step."""

    def __init__(self, suppress_tokens, device: str | torch.device = "cpu"):
        self.suppress_tokens = torch.tensor(list(suppress_tokens), device=device)

    def __call__(self, input_ids, scores):
        mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), self.suppress_tokens.to(scores.device))
        return torch.where(mask, -float("inf"), scores)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Scores of the listed tokens -inf at the first generated position (input length == begin_index)."""

    def __init__(self, begin_suppress_tokens, begin_index: int, device: str | torch.device = "cpu"):
        self.begin_suppress_tokens = torch.tensor(list(begin_suppress_tokens), device=device)
        self.begin_index = begin_index

    def __call__(self, input_ids, scores):
        mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device),
                          self.begin_suppress_tokens.to(scores.device))
        if input_ids.shape[-1] == self.begin_index:
            return torch.where(mask, -float("inf"), scores)
        return scores


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    """Force bos_token_id as the first token (when input_ids has length 1)."""

    def __init__(self, bos_token_id: int):
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] == 1:
            out = torch.full_like(scores, -math.inf)
            out[:, self.bos_token_id] = 0
            return out
        return scores


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """Force an EOS token when the next token reaches max_length."""

    def __init__(self, max_length: int, eos_token_id, device: str | torch.device = "cpu"):
        self.max_length = max_length
        self.eos_token_id = _eos_tensor(eos_token_id, device)
        if torch.is_floating_point(self.eos_token_id) or (self.eos_token_id < 0).any():
            raise ValueError(f"`eos_token_id` has to be a list of positive integers, but is {eos_token_id}")

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] == self.max_length - 1:
            out = torch.full_like(scores, -math.inf)
            out[:, self.eos_token_id] = 0
            return out
        return scores


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """nan -> 0, +-inf -> the dtype's max/min."""

    def __call__(self, input_ids, scores):
        out = torch.where(scores != scores, 0.0, scores)
        out = torch.where(scores == float("inf"), torch.finfo(scores.dtype).max, out)
        return torch.where(scores == -float("inf"), torch.finfo(scores.dtype).min, out)


class LogitNormalization(LogitsProcessor):
    """log_softmax of the scores (renormalize_logits=True; always last)."""

    def __call__(self, input_ids, scores):
        return scores.log_softmax(dim=-1)
