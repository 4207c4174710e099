"""Zero-shot forecasting with causal LMs: serialized prompts, constrained decoding."""

from llm_st.zeroshot.constrained import GrammarTables, NumberConstraint, NumberGrammar
from llm_st.zeroshot.forecaster import (
    ZeroShotForecaster,
    auto_batch_size,
    decoding_bytes_per_sequence,
)

__all__ = [
    "GrammarTables",
    "NumberConstraint",
    "NumberGrammar",
    "ZeroShotForecaster",
    "auto_batch_size",
    "decoding_bytes_per_sequence",
]
