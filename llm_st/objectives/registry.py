"""Objectives found by name, so recipes can say ``objective: {name: regression}``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective

_REGISTRY: dict[str, type[Objective]] = {}
_INFRA = {"base", "registry"}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: make the objective buildable as ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective name {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def _load_all() -> None:
    """Import every objective file of ``llm_st.objectives`` (each registers itself)."""
    import llm_st.objectives as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _INFRA and not mod.name.startswith("_"):
            importlib.import_module(f"llm_st.objectives.{mod.name}")


def list_objectives() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_objective_class(name: str) -> type[Objective]:
    _load_all()
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown objective {name!r}", f"use one of: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[key]


def build_objective(
    name: str, info: DataInfo | None = None, model: nn.Module | None = None, **params: Any
) -> Objective:
    """Instantiate objective ``name``; unknown parameters are a :class:`ConfigError`."""
    cls = get_objective_class(name)
    try:
        return cls(info=info, model=model, **params)
    except TypeError as exc:
        raise ConfigError(
            f"objective {name!r}: {exc}",
            f"check the objective params of the recipe against {cls.__name__}'s arguments",
        ) from exc
