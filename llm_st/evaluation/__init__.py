"""Scoring: the one :class:`~llm_st.evaluation.evaluate.Scorer` of every method, on one or
several processes (the metrics themselves are in :mod:`llm_st.metrics`)."""

from llm_st.evaluation.evaluate import Scorer, evaluate, mean_loss, score_forecast

__all__ = ["Scorer", "evaluate", "mean_loss", "score_forecast"]
