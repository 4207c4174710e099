"""Prompts from spatio-temporal data: templates in ``prompts/``, statistics, spatial context.

This package renders text; it never calls a model (see :mod:`llm_st.zeroshot`).
"""

from llm_st.prompting.context import (
    PromptBatch,
    PromptBuilder,
    default_description,
    next_place_examples,
    node_indices,
    render_prompt,
    row_at,
    window_histories,
)
from llm_st.prompting.stats import series_statistics, top_lags
from llm_st.prompting.templates import PromptTemplate, list_templates, load_template, render

__all__ = [
    "PromptBatch",
    "PromptBuilder",
    "PromptTemplate",
    "default_description",
    "list_templates",
    "load_template",
    "next_place_examples",
    "node_indices",
    "render",
    "render_prompt",
    "row_at",
    "series_statistics",
    "top_lags",
    "window_histories",
]
