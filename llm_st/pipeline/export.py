"""``llm-st export``: a LoRA run merged into a plain model for serving stacks.

A run with a LoRA backbone stores the adapter only (``adapter/``); serving stacks want one
model. :func:`export_merged` rebuilds the run with its backbone in full precision (a
QLoRA run too: its 4-bit weights are re-read from the source unquantized, as QLoRA users
merge), loads the trained tensors and the adapter, folds the update into the weights
(``W + (alpha / r) B A``) and writes:

``backbone/``
    the merged Hugging Face model (``save_pretrained``, safetensors) with its tokenizer
    when it has one: what vLLM, TGI or ``AutoModel.from_pretrained`` load;
``recipe.yaml``, ``model.safetensors``, ``manifest.json``, ``scaler.json``, ``data_info.*``
    a run directory whose backbone is ``backbone/`` (``freeze: frozen``), so
    :meth:`~llm_st.pipeline.ForecastPipeline.from_run` forecasts with it like any run.

A fine-tuned LM (``llm-st finetune``) is exported as the merged LM alone
(:func:`~llm_st.pipeline.finetune.merge_lm_run`): a Hugging Face causal LM directory that
``llm-st zero-shot --model`` forecasts with.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from llm_st.backbones import merge_lora
from llm_st.backbones.frozen import FrozenBackbone
from llm_st.config import save_recipe
from llm_st.engine.artifacts import (
    DATA_ARRAYS,
    DATA_INFO,
    load_data_info,
    load_model,
    save_model,
)
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.registry import build_model
from llm_st.pipeline.finetune import is_lm_recipe, merge_lm_run, open_export

BACKBONE_DIR = "backbone"
COPIED = ("scaler.json", DATA_INFO, DATA_ARRAYS, "metrics.json")


def export_merged(run_dir: str | Path, out: str | Path) -> Path:
    """Merge the LoRA backbone of the run in ``run_dir`` and write a servable run to ``out``.

    Raises
    ------
    ConfigError
        The run has no LoRA backbone, or ``out`` exists and is not empty.
    ModelLoadError
        ``run_dir`` is not a finished run.
    """
    run, out, recipe = open_export(run_dir, out)
    if is_lm_recipe(recipe):  # a fine-tuned LM: the merged LM itself is what is served
        return merge_lm_run(run, out)
    spec = dict(recipe.model.backbone or {})
    if spec.get("freeze") not in ("lora", "qlora"):
        raise ConfigError(
            f"the run in {str(run)!r} has no LoRA backbone (freeze: {spec.get('freeze')}), so "
            "there is nothing to merge",
            "export runs trained with freeze: lora or qlora; other runs are servable as they are",
        )
    lora = {k: v for k, v in (spec.get("lora") or {}).items() if k != "compute_dtype"}
    full = {**spec, "freeze": "lora", "lora": {**lora, "quantize": "none"}}
    model = build_model(
        recipe.model.name, load_data_info(run), backbone=full, **recipe.model.params
    )
    load_model(model, run)
    merge_lora(model)
    out.mkdir(parents=True, exist_ok=True)
    (body,) = [m for m in model.modules() if isinstance(m, FrozenBackbone)]
    body.hf_model.save_pretrained(out / BACKBONE_DIR, safe_serialization=True)
    _save_tokenizer(str(spec.get("source")), out / BACKBONE_DIR)
    body.name = BACKBONE_DIR
    served = {k: v for k, v in spec.items() if k != "lora"}
    served.update(source=BACKBONE_DIR, freeze="frozen")
    served_model = dataclasses.replace(recipe.model, backbone=served)
    save_recipe(dataclasses.replace(recipe, model=served_model), out / "recipe.yaml")
    save_model(model, out)
    for name in COPIED:
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    return out


def _save_tokenizer(source: str, directory: Path) -> None:
    """The backbone's tokenizer beside the merged weights, when it has one."""
    from llm_st.backbones import load_tokenizer

    try:
        tokenizer = load_tokenizer(source)
    except (ModelLoadError, OSError, ValueError):
        return  # a backbone without a tokenizer (fed embeddings only)
    tokenizer.save_pretrained(str(directory))
