"""Methods found by name, so recipes can say ``model: dlinear``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from llm_st.backbones.spec import BackboneSpec
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel

_REGISTRY: dict[str, type[STModel]] = {}
_INFRA = {"base", "registry"}
# Models built on parts of a higher layer register from there: the ST-token LM
# (``st_token_lm``) needs the cross-modal encoder and projection, and ``llm_st.crossmodal``
# sits above ``llm_st.models``, so it lives in ``llm_st.crossmodal.st_tokens``. Importing it
# by name here (not an import statement, which the layer contract forbids) keeps
# ``build_model("st_token_lm", ...)`` working from any caller. Keep this list short and
# documented: every entry is an exception to the layering.
EXTRA_MODULES: tuple[str, ...] = ("llm_st.crossmodal.st_tokens",)


def register_model(name: str) -> Callable[[type[STModel]], type[STModel]]:
    def deco(cls: type[STModel]) -> type[STModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def _load_all() -> None:
    """Import every method file of ``llm_st.models`` (one file per method registers itself)
    and the modules of :data:`EXTRA_MODULES`."""
    import llm_st.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _INFRA and not mod.name.startswith("_"):
            importlib.import_module(f"llm_st.models.{mod.name}")
    for name in EXTRA_MODULES:  # models that register from a higher layer (see above)
        importlib.import_module(name)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[STModel]:
    _load_all()
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}", f"use one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_model(
    name: str,
    info: DataInfo,
    backbone: BackboneSpec | Mapping[str, Any] | str | None = None,
    **params: Any,
) -> STModel:
    """Instantiate method ``name`` for ``info``; unknown hyper-parameters are an error.

    Parameters
    ----------
    name
        Registry name of the method.
    info
        The data facts the method is built for.
    backbone
        The pretrained backbone (a recipe's ``model.backbone`` block), passed as the
        method's ``backbone`` argument; None: the method's default, if it has one.
    **params
        The method's other arguments (a recipe's ``model.params``).

    Raises
    ------
    ConfigError
        An unknown method, a backbone for a method without one, or arguments the method
        does not take or refuses.
    """
    cls = get_model_class(name)
    if backbone is not None:
        if cls.default_backbone is None:
            takers = [m for m in list_models() if get_model_class(m).default_backbone is not None]
            raise ConfigError(
                f"model {name!r} is not built on a pretrained backbone, but a backbone is "
                "given (model.backbone)",
                f"drop the backbone block, or use a method that has one ({', '.join(takers)})",
            )
        params["backbone"] = backbone
    try:
        return cls(info, **params)
    except TypeError as exc:
        raise ConfigError(
            f"model {name!r}: {exc}",
            f"check the model section of the recipe against {cls.__name__}'s arguments",
        ) from exc
