"""lightswe.model: the MiniMax-Text-01 / M1 hybrid-attention model (lightning + softmax attention, MoE).

Public API::

    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, SamplingConfig, load_tokenizer
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    gens = model.generate([[257, 104, 105]], SamplingConfig(max_new_tokens=16, stop_token_ids=(258,)))
    lp = model.token_logprobs(ids, cu_seqlens=cu, with_entropy=True)   # learner
"""

from lightswe.model.cache import HybridCache
from lightswe.model.config import MiniMaxConfig
from lightswe.model.generation import Generation, SamplingConfig, generate
from lightswe.model.model import CausalLMOutput, MiniMaxForCausalLM, TokenLogprobs
from lightswe.model.tokenizer import SPECIAL_TOKENS, ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "ByteTokenizer",
    "CausalLMOutput",
    "Generation",
    "HFTokenizer",
    "HybridCache",
    "MiniMaxConfig",
    "MiniMaxForCausalLM",
    "SamplingConfig",
    "TokenLogprobs",
    "Tokenizer",
    "generate",
    "load_tokenizer",
]
