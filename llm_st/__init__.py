"""llm-st: adapt pretrained language and vision models to spatio-temporal data.

What a user needs is here; each name is imported from its module on first use, so that
``import llm_st`` stays light::

    import llm_st

    data = llm_st.load("ETTh1")                              # STData [T, N, C]
    task = llm_st.prepare_task(data, history=336, horizon=96)
    metrics = llm_st.train(llm_st.load_recipe("alignment/dlinear/ETTh1/config.yaml"), "runs/dl")
    pipeline = llm_st.ForecastPipeline.from_run("runs/dl")
    forecast = pipeline.predict(data)                         # Forecast after the last row
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Adjacency": "llm_st.data.container",
    "STData": "llm_st.data.container",
    "load": "llm_st.data",
    "prepare_task": "llm_st.data.task",
    "list_models": "llm_st.models.registry",
    "build_model": "llm_st.models.registry",
    "load_recipe": "llm_st.config",
    "train": "llm_st.engine",
    "Forecast": "llm_st.forecast",
    "ForecastPipeline": "llm_st.pipeline",
    "ZeroShotForecaster": "llm_st.zeroshot",
    "ConfigError": "llm_st.errors",
    "DataError": "llm_st.errors",
    "DataNotFoundError": "llm_st.errors",
    "LLMSTError": "llm_st.errors",
    "ModelLoadError": "llm_st.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llm_st' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
