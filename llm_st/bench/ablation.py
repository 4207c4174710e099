"""Transfer adapters beside the ablations Tan et al. showed users need, everything else equal.

Tan, Merrill, Gupta, Althoff and Hartvigsen ("Are Language Models Actually Useful for
Time Series Forecasting?", NeurIPS 2024) replace the LLM of an adapter by nothing
(``none``), by one attention layer (``llm2attn``) or by the same LLM with random weights
(``random_init``). Benchmarks compare them as methods of a plan (a method's
``backbone_mode``, :mod:`llm_st.bench.plan`; ``alignment/benchmarks/transfer_ablations.yaml``
runs every adapter in every mode); :func:`run_modes` trains one adapter in each mode on a
task already in memory, as ``llm-st demo`` does (:mod:`llm_st.demo`).

Backbones are :class:`~llm_st.backbones.spec.BackboneSpec` blocks (a recipe's
``model.backbone``); each mode is that block with its ``mode`` set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.config import TrainingConfig
from llm_st.data.task import ForecastTask
from llm_st.engine import fit_and_evaluate, seed_everything
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import build_model, get_model_class
from llm_st.objectives import build_objective

logger = logging.getLogger("llm_st")

MODE_NOTES = {
    "pretrained": "the pretrained backbone",
    "random_init": "same blocks, random weights",
    "llm2attn": "one trainable attention layer instead of the LLM",
    "none": "no LLM: embeddings straight to the head",
}


def takes_backbone_mode(model: str | type[STModel]) -> bool:
    """Whether a method runs Tan et al.'s ablations: its backbone (a
    :class:`~llm_st.backbones.spec.BackboneSpec`) may be in every mode of
    :data:`BACKBONE_MODES`."""
    cls = get_model_class(model) if isinstance(model, str) else model
    return set(BACKBONE_MODES) <= set(cls.backbone_modes)


def run_modes(
    name: str,
    params: dict[str, Any],
    backbone: Mapping[str, Any] | None,
    task: ForecastTask,
    training: TrainingConfig,
    objective: tuple[str, dict[str, Any]] = ("regression", {}),
    modes: Sequence[str] | None = BACKBONE_MODES,
    horizons: Sequence[int] = (3, 6, 12),
) -> list[dict[str, Any]]:
    """Train and test method ``name`` once per backbone mode, everything else equal.

    Parameters
    ----------
    name, params
        Registry name and keyword arguments besides the backbone.
    backbone
        The method's backbone block (fields of
        :class:`~llm_st.backbones.spec.BackboneSpec`; None: the method's default); each
        run sets its ``mode``.
    task
        The forecasting task (its ``val_stride`` a budget for validation).
    training
        Optimization settings shared by every mode (its ``seed`` seeds each run).
    objective
        ``(name, params)`` of the training objective.
    modes
        Modes of :data:`BACKBONE_MODES` to run; ignored (one run) for methods that do not
        :func:`takes_backbone_mode`, and None runs the recipe's mode only.
    horizons
        Horizon steps reported besides the average.

    Returns
    -------
    list of dict
        One row per run: ``model``, ``mode`` (None without modes), ``test`` and ``val``
        metrics (``{"avg": {mae, mse, rmse, mape}, "h3": ...}``), ``trainable``,
        ``total`` (parameters), ``steps``, ``epochs`` (fraction of an epoch when
        shorter), ``train_time_s`` (optimizer steps only), ``time_per_epoch_s``,
        ``samples_per_s``, ``seconds`` (build, training, validation and test),
        ``num_test_windows``, ``metric_scale``, ``seed``.
    """
    runs: Sequence[str | None] = list(modes) if modes and takes_backbone_mode(name) else [None]
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    rows = []
    for mode in runs:
        started = time.perf_counter()
        seed_everything(training.seed)
        spec = backbone if mode is None else {**(backbone or {}), "mode": mode}
        model = build_model(name, info, backbone=spec, **params)
        loss = build_objective(objective[0], info, model, **objective[1])
        result = fit_and_evaluate(model, task, training, loss, horizons=horizons, started=started)
        epochs, train_time = result["epochs"], result["train_time_s"]
        rows.append(
            {
                "model": name,
                "mode": mode,
                "test": result["test"],
                "val": result["val"],
                "trainable": result["params"]["trainable"],
                "total": result["params"]["total"],
                "steps": result["steps"],
                "epochs": epochs,
                "train_time_s": train_time,
                "time_per_epoch_s": train_time / epochs if epochs else None,
                "samples_per_s": result["samples_per_s"],
                "seconds": result["total_time_s"],
                "num_test_windows": result["num_test_windows"],
                "metric_scale": result["metric_scale"],
                "seed": training.seed,
            }
        )
        logger.info(
            "%s/%s: test avg MAE %.4f MSE %.4f, %.0f s",
            name,
            mode,
            result["test"]["avg"]["mae"],
            result["test"]["avg"]["mse"],
            result["total_time_s"],
        )
    return rows
