"""Training objectives: what the engine minimizes (regression, masked, contrastive, ...).

One file per objective; each registers itself with :func:`register_objective` and is
imported on the first lookup by name.
"""

from llm_st.objectives.base import ForecastObjective, Objective
from llm_st.objectives.registry import (
    build_objective,
    get_objective_class,
    list_objectives,
    register_objective,
)

__all__ = [
    "ForecastObjective",
    "Objective",
    "build_objective",
    "get_objective_class",
    "list_objectives",
    "register_objective",
]
