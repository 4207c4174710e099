"""Methods found by name, so recipes can say ``model: dlinear``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel

_REGISTRY: dict[str, type[STModel]] = {}
# modules whose import registers methods; imported on first lookup
_MODULES = ("llm_st.models.naive",)


def register_model(name: str) -> Callable[[type[STModel]], type[STModel]]:
    def deco(cls: type[STModel]) -> type[STModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[STModel]:
    _load_all()
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}", f"use one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_model(name: str, info: DataInfo, **hparams: Any) -> STModel:
    """Instantiate method ``name`` for ``info``; unknown hyper-parameters are an error."""
    cls = get_model_class(name)
    try:
        return cls(info, **hparams)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}", f"check the model section of the recipe against {cls.__name__}'s arguments") from exc
