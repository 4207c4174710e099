"""Zero-shot forecasting with causal LMs: serialized prompts, constrained decoding."""

from llm_st.zeroshot.constrained import NumberConstraint, NumberGrammar
from llm_st.zeroshot.forecaster import ZeroShotForecaster, pick_windows

__all__ = ["NumberConstraint", "NumberGrammar", "ZeroShotForecaster", "pick_windows"]
