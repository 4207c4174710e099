"""The standard recipes, ``alignment/<model>/<dataset>/config.yaml``.

Found in the checkout the package runs from, else in the copy a wheel installs as
``llm_st.recipes``.
"""

from __future__ import annotations

from pathlib import Path

from llm_st.config import recipes_root


def recipe_path(model: str, dataset: str, root: Path | None = None) -> Path:
    """``<root>/<model>/<dataset>/config.yaml``; ``root`` defaults to :func:`recipes_root`."""
    return (root or recipes_root()) / model / dataset / "config.yaml"
