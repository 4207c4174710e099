"""Zero-shot forecasting with causal LMs: serialized prompts, constrained decoding, scores."""

from llm_st.zeroshot.constrained import NumberConstraint, NumberGrammar
from llm_st.zeroshot.forecaster import (
    ZeroShotForecaster,
    evaluate_forecast,
    pick_windows,
    run_zero_shot,
    zero_shot_demo_row,
)

__all__ = [
    "NumberConstraint",
    "NumberGrammar",
    "ZeroShotForecaster",
    "evaluate_forecast",
    "pick_windows",
    "run_zero_shot",
    "zero_shot_demo_row",
]
