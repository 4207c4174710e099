"""The standard recipes, ``alignment/<model>/<dataset>/config.yaml``.

Found in the checkout the package runs from, else in the copy a wheel installs as
``llm_st.recipes``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llm_st.errors import ConfigError


def recipes_root() -> Path:
    """The folder of the standard recipes: a checkout's ``alignment/``, else the installed one."""
    checkout = Path(__file__).resolve().parents[2] / "alignment"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("llm_st.recipes")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the standard recipes are neither in a checkout (alignment/) nor installed "
            "(llm_st.recipes)",
            "reinstall llm-st, or pass the folder of the recipes",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def recipe_path(model: str, dataset: str, root: Path | None = None) -> Path:
    """``<root>/<model>/<dataset>/config.yaml``; ``root`` defaults to :func:`recipes_root`."""
    return (root or recipes_root()) / model / dataset / "config.yaml"
