"""Pretrained backbones: loading by local path, hub id or tiny test config; freezing, LoRA.

The names below are imported from their modules on first use, so importing one module
of the package (``llm_st.backbones.lora``, ``llm_st.backbones.tiny``) loads only what
that module needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONE_MODES": "ablations",
    "FAMILIES": "families",
    "FREEZE_POLICIES": "frozen",
    "BackboneSpec": "spec",
    "Family": "families",
    "FrozenBackbone": "frozen",
    "LoraSettings": "lora",
    "TINY_MODELS": "tiny",
    "apply_lora": "lora",
    "build_causal_lm": "spec",
    "is_tiny": "tiny",
    "load_backbone": "frozen",
    "load_causal_lm": "hub",
    "load_lora": "lora",
    "load_trainable_causal_lm": "frozen",
    "load_tokenizer": "hub",
    "merge_lora": "frozen",
    "register_tiny": "tiny",
    "resolve_source": "hub",
    "save_lora": "lora",
    "tiny_model_dir": "tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
