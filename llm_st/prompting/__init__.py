"""Prompts from spatio-temporal data: templates in ``prompts/``, statistics, spatial context.

This package renders text; it never calls a model (see :mod:`llm_st.zeroshot`).
:mod:`llm_st.prompting.dataset` turns forecasting windows into an instruction (SFT)
dataset; its names are exported here lazily (it imports ``datasets`` and ``torch``).
"""

from typing import Any

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

_SFT_NAMES = frozenset(
    {
        "SFTBatches",
        "SFTDataConfig",
        "build_sft_dataset",
        "dataset_fingerprint",
        "sft_collate",
        "sft_texts",
    }
)


def __getattr__(name: str) -> Any:
    """The SFT dataset's names, imported on first use."""
    if name in _SFT_NAMES:
        from llm_st.prompting import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PromptBatch",
    "PromptBuilder",
    "PromptTemplate",
    "SFTBatches",
    "SFTDataConfig",
    "build_sft_dataset",
    "dataset_fingerprint",
    "sft_collate",
    "sft_texts",
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
