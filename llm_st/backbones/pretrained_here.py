"""Where the forecasting LM pre-trained here (``st-lm``) lives: a recipe file and a hash.

``llm-st pretrain`` (:mod:`llm_st.pipeline.pretrain`) trains a small causal LM from scratch
on serialized synthetic series, as Chronos did with T5. The shipped recipe,
``alignment/pretrain/st_lm.yaml``, is built at most once per machine: the model directory
is ``$LLM_ST_CACHE/models/st-lm-<first 12 hex digits of the sha256 of the recipe's
text>/model``, so editing the recipe builds a new model instead of reusing a stale one.

This module only computes paths (the backbones layer cannot train anything);
:func:`llm_st.pipeline.pretrain.pretrained_lm` builds the directory, and
:func:`llm_st.backbones.hub.resolve_source` resolves the name :data:`ST_LM` to it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llm_st.config import cache_root, recipes_root
from llm_st.errors import ConfigError

ST_LM = "st-lm"
"""The name ``BackboneSpec(source=...)``, ``load_causal_lm`` and ``--model`` take."""

RECIPE = "st_lm.yaml"
TEST_RECIPE = "st_lm_test.yaml"
MODEL_DIR = "model"


def recipe_file(name: str = RECIPE) -> Path:
    """The shipped pre-training recipe ``alignment/pretrain/<name>`` (of the checkout, else
    the installed copy: :func:`~llm_st.config.recipes_root`)."""
    path = recipes_root() / "pretrain" / name
    if not path.is_file():
        raise ConfigError(
            f"the pre-training recipe {path} is missing",
            "reinstall llm-st, or pass the path of a pre-training recipe",
        )
    return path


def recipe_hash(path: str | Path) -> str:
    """The first 12 hex digits of the sha256 of the recipe file's text."""
    return hashlib.sha256(Path(path).read_text().encode()).hexdigest()[:12]


def pretrained_root(recipe: str | Path | None = None) -> Path:
    """``$LLM_ST_CACHE/models/st-lm-<hash>``: the build folder of the LM of ``recipe``
    (default: the shipped :data:`RECIPE`); the model itself is its ``model/``."""
    path = Path(recipe) if recipe is not None else recipe_file()
    return cache_root() / "models" / f"{ST_LM}-{recipe_hash(path)}"


def pretrained_model_dir(recipe: str | Path | None = None) -> Path:
    """The Hugging Face model directory of the LM pre-trained from ``recipe`` (it may not
    exist yet)."""
    return pretrained_root(recipe) / MODEL_DIR
