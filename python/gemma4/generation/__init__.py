"""Generation for gemma4 models, with transformers 5.17's interface: GenerationConfig, logits processors,
stopping criteria, streamers and the generate loop over gemma4.cache.Gemma4Cache. See docs/generation.md."""
from .config import GENERATION_CONFIG_NAME, GenerationConfig
from .greedy_head import full_greedy_head
from .logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, ForcedBOSTokenLogitsProcessor,
                             ForcedEOSTokenLogitsProcessor, InfNanRemoveLogitsProcessor, LogitNormalization,
                             LogitsProcessor, LogitsProcessorList, MinLengthLogitsProcessor,
                             MinNewTokensLengthLogitsProcessor, MinPLogitsWarper, NoRepeatNGramLogitsProcessor,
                             RepetitionPenaltyLogitsProcessor, SuppressTokensAtBeginLogitsProcessor,
                             SuppressTokensLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                             TopPLogitsWarper, TypicalLogitsWarper)
from .stopping import (EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StoppingCriteria, StoppingCriteriaList,
                       StopStringCriteria)
from .streamers import AsyncTextIteratorStreamer, BaseStreamer, TextIteratorStreamer, TextStreamer
from .utils import GenerateDecoderOnlyOutput, generate

__all__ = [
    "GenerationConfig", "GENERATION_CONFIG_NAME", "generate", "GenerateDecoderOnlyOutput", "full_greedy_head",
    "LogitsProcessor", "LogitsProcessorList", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "TemperatureLogitsWarper", "RepetitionPenaltyLogitsProcessor", "TopKLogitsWarper", "TopPLogitsWarper",
    "MinPLogitsWarper", "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper",
    "NoRepeatNGramLogitsProcessor", "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor", "InfNanRemoveLogitsProcessor",
    "LogitNormalization", "StoppingCriteria", "StoppingCriteriaList", "MaxLengthCriteria", "MaxTimeCriteria",
    "EosTokenCriteria", "StopStringCriteria", "BaseStreamer", "TextStreamer", "TextIteratorStreamer",
    "AsyncTextIteratorStreamer",
]
