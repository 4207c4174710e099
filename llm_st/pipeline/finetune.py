"""``llm-st finetune``: fine-tune a causal LM to answer forecasting prompts, on the engine.

A fine-tuning recipe is an ordinary recipe whose model answers in text (``text_lm``, or
``st_token_lm`` with ST tokens spliced into the prompt) and whose objective is ``sft``::

    data: {spec: ETTh1, history: 96, horizon: 24}
    model:
      name: text_lm
      backbone: {source: st-lm, freeze: qlora, lora: {r: 8}, gradient_checkpointing: true}
      params: {template: plain, val_windows: 8, test_windows: 64}
    objective: {name: sft, params: {train_windows: 512}}
    training: {max_steps: 200, batch_size: 8, lr: 1e-3, select_metric: val_mae}

:func:`finetune` runs it with :func:`llm_st.engine.train` (the one engine: Accelerate,
mixed precision, accumulation, atomic checkpoints, ``--resume``, early stopping on the
validation loss or on the validation MAE of decoded forecasts, several processes), so the
run directory is like any other: ``adapter/`` (peft's layout) under LoRA / QLoRA,
``model.safetensors`` with every weight after full fine-tuning, ``recipe.yaml``,
``metrics.json`` (with ``valid_fraction``: answers that parsed), ``log.jsonl``.
:meth:`~llm_st.pipeline.ForecastPipeline.from_run` forecasts with it, and
:func:`merge_lm_run` (``--merge``, or ``llm-st export``) writes the LM with the adapter
folded in as a plain Hugging Face model directory: what ``llm-st zero-shot --model``,
serving stacks and a further fine-tuning (``backbone.source``) load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from llm_st.config import Recipe, load_recipe
from llm_st.engine import train
from llm_st.engine.artifacts import load_data_info, load_model
from llm_st.engine.rundir import atomic_write_json
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.registry import build_model, get_model_class

MERGED_DIR = "merged"


def is_lm_recipe(recipe: Recipe) -> bool:
    """Whether the recipe's model answers in text (fine-tuned with ``llm-st finetune``)."""
    return bool(getattr(get_model_class(recipe.model.name), "window_forecaster", False))


def check_finetune_recipe(recipe: Recipe) -> None:
    """Raise :class:`ConfigError` unless ``recipe`` fine-tunes an LM with the sft objective."""
    if not is_lm_recipe(recipe):
        raise ConfigError(
            f"model {recipe.model.name!r} is not a language model that answers in text",
            "fine-tune text_lm or st_token_lm with llm-st finetune; train other methods with "
            "llm-st train",
        )
    if recipe.objective.name != "sft" or recipe.objective.pretrain is not None:
        raise ConfigError(
            f"objective {recipe.objective.name!r} does not fine-tune on text answers",
            "use objective: {name: sft} in a fine-tuning recipe",
        )


def run_bytes(run_dir: str | Path) -> int:
    """Bytes of what a run keeps of the model: ``model.safetensors`` and ``adapter/``."""
    run = Path(run_dir)
    files = [run / "model.safetensors", *sorted((run / "adapter").glob("*"))]
    return sum(f.stat().st_size for f in files if f.is_file())


def is_main_process() -> bool:
    """Whether this is the main process of a distributed launch (or the only process)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def finetune(
    recipe: Recipe,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    merge: bool = False,
) -> dict[str, Any]:
    """Fine-tune the recipe's LM into ``out_dir`` and test it (every process calls this).

    Returns the metrics of ``metrics.json`` (:func:`llm_st.engine.run.fit_and_evaluate`)
    plus ``run_bytes`` (what the run keeps of the model) and, with ``merge``, ``merged``
    (the merged Hugging Face model directory, ``out_dir/merged``).
    """
    check_finetune_recipe(recipe)
    metrics = train(recipe, out_dir, resume=resume, overwrite=overwrite)
    if is_main_process():
        metrics["run_bytes"] = run_bytes(out_dir)
        if merge:
            target = Path(out_dir) / MERGED_DIR
            if target.exists():
                shutil.rmtree(target)  # rebuilt from this run's weights (a resumed run)
            metrics["merged"] = str(merge_lm_run(out_dir, target))
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def open_export(run_dir: str | Path, out: str | Path) -> tuple[Path, Path, Recipe]:
    """``(run, out, recipe)`` of an export or merge of a finished run into ``out``.

    Raises
    ------
    ModelLoadError
        ``run_dir`` holds no ``recipe.yaml`` (not a finished run).
    ConfigError
        ``out`` exists and is not empty (nothing is overwritten).
    """
    run, out = Path(run_dir), Path(out)
    if not (run / "recipe.yaml").is_file():
        raise ModelLoadError(
            f"{str(run)!r} has no recipe.yaml, so it is not a finished run",
            "pass the --out directory of a finished llm-st train or llm-st finetune",
        )
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{str(out)!r} is not empty", "choose a new --out for the export")
    return run, out, load_recipe(run / "recipe.yaml")


def merge_lm_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the fine-tuned LM of ``run_dir`` as a plain Hugging Face model to ``out``.

    A LoRA or QLoRA run is rebuilt with its LM in full precision (a QLoRA run's 4-bit
    weights re-read unquantized from the source, as QLoRA users merge), the adapter loaded
    and folded into the weights (``W + (alpha / r) B A``); a fully fine-tuned run is written
    as it is. The tokenizer is written beside the weights.

    Raises
    ------
    ConfigError
        ``out`` exists and is not empty, or the run is not a fine-tuned LM.
    ModelLoadError
        ``run_dir`` is not a finished run.
    """
    run, out, recipe = open_export(run_dir, out)
    check_finetune_recipe(recipe)
    if getattr(get_model_class(recipe.model.name), "needs_windows", False):
        raise ConfigError(
            f"a {recipe.model.name} run reads ST tokens from its own encoder, which a plain "
            "language model directory cannot hold",
            f"serve the run directory itself (llm-st predict --run {run})",
        )
    spec = dict(recipe.model.backbone or {})
    if spec.get("freeze") in ("lora", "qlora"):
        lora = {k: v for k, v in (spec.get("lora") or {}).items() if k != "compute_dtype"}
        spec.update(freeze="lora", lora={**lora, "quantize": "none"})
    model = build_model(
        recipe.model.name, load_data_info(run), backbone=spec or None, **recipe.model.params
    )
    load_model(model, run)
    lm = model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    return out
