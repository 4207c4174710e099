"""Use what was trained: load a run, a pretrained LM or a baseline; forecast; evaluate.

- :class:`~llm_st.pipeline.forecast.ForecastPipeline`: ``from_run``, ``from_pretrained``,
  ``from_method``, ``predict``, ``predict_df``;
- :func:`~llm_st.pipeline.evaluate.evaluate_pipeline`: a pipeline scored on a dataset
  under its protocol (``llm-st evaluate``);
- :func:`~llm_st.pipeline.zero_shot.run_zero_shot`: ``llm-st zero-shot``;
- :func:`~llm_st.pipeline.align.run_alignment`: ``llm-st align``.
"""

from llm_st.pipeline.evaluate import evaluate_pipeline, evaluate_run
from llm_st.pipeline.forecast import ForecastPipeline

__all__ = ["ForecastPipeline", "evaluate_pipeline", "evaluate_run"]
