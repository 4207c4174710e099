"""``llm-st evaluate``: a pipeline's forecasts of a split, scored by the one scorer.

Evaluation is :meth:`ForecastPipeline.predict` at the cut-off of every window of the
split, then :func:`~llm_st.evaluation.evaluate.score_forecast`: the engine's test step
scores the same windows with the same :class:`~llm_st.evaluation.evaluate.Scorer`, so a
run evaluated on its own data reproduces its ``metrics.json``.

On another dataset with the same channels (the zero-shot transfer protocol of the LLM
forecasting papers, e.g. a model trained on ETTh1 tested on ETTh2) the windows and the
metric scale follow that dataset's protocol (``docs/protocol.md``). The inputs are scaled
with the run's own scaler, fit on the training data, so nothing of the new dataset's
training split is used; ``fit_scaler=True`` instead fits the scaler on the new dataset's
training split, as the papers' code does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llm_st.data.task import ForecastTask, prepare_task
from llm_st.data.windows import pick_windows
from llm_st.evaluation.evaluate import score_forecast
from llm_st.forecast import Forecast
from llm_st.pipeline.forecast import DataLike, ForecastPipeline, as_data


def evaluate_pipeline(
    pipeline: ForecastPipeline,
    data: DataLike | ForecastTask,
    part: str = "test",
    fit_scaler: bool = False,
    horizons: Sequence[int] = (3, 6, 12),
    max_windows: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Forecast]:
    """Forecast every window of ``part`` of ``data`` and score it under its protocol.

    Parameters
    ----------
    data
        A dataset (split, scaler protocol and metric scale from its registry entry, else
        70/10/20, one z-score, original scale), or a :class:`ForecastTask` to use as is.
    fit_scaler
        Scale the inputs with a scaler fit on ``data``'s training split instead of the
        pipeline's own (a baseline built with ``from_method`` is always fit there).
    max_windows
        Score at most this many windows, spread evenly over the split.

    Returns
    -------
    result : dict
        :func:`score_forecast`'s keys (``metrics``, ``num_windows``, ``metric_scale``,
        ``crps``, ``valid_fraction``, ``num_series``) plus ``model``, ``dataset``,
        ``part``, ``scaler`` (``"run"`` or ``"fit on <dataset> train"``), ``forecast``
        (the forecast's facts) and ``seconds``.
    forecast : Forecast
        The scored forecasts.
    """
    began = time.perf_counter()
    if isinstance(data, ForecastTask):
        task = data
    else:
        task = prepare_task(as_data(data, data_dir), pipeline.history, pipeline.horizon)
    own_scaler = pipeline.scaler is not None and not fit_scaler and pipeline.method is None
    if own_scaler:
        task = dataclasses.replace(task, scaler=pipeline.scaler)
    if pipeline.method is not None:
        pipeline.fit(task.train_data(), task.scaler)
    dataset = task.dataset(part)
    chosen = pick_windows(len(dataset), max_windows)
    cutoffs = dataset.index.starts[chosen] + pipeline.history - 1
    forecast = pipeline.predict(task.data, at=cutoffs, scaler=task.scaler, progress=progress)
    result = score_forecast(forecast, task, horizons)
    result.update(
        model=pipeline.name,
        dataset=task.data.name,
        part=part,
        scaler="run" if own_scaler else f"fit on {task.data.name} train",
        seconds=time.perf_counter() - began,
    )
    result["forecast"] = forecast.meta
    return result, forecast


def evaluate_run(
    run_dir: str | Path,
    data: DataLike | None = None,
    part: str = "test",
    fit_scaler: bool = False,
    device: str | torch.device | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the run in ``run_dir`` on ``part`` of ``data`` (default: the run's own data
    with the run's split, which reproduces its test metrics).

    See :func:`evaluate_pipeline` (its result dict); the reported horizons are the recipe's.
    """
    from llm_st.engine.run import build_task

    pipeline = ForecastPipeline.from_run(run_dir, device=device)
    recipe = pipeline.recipe
    if data is None:
        task = build_task(recipe.data)
    else:
        task = prepare_task(as_data(data, data_dir), pipeline.history, pipeline.horizon)
    result, _ = evaluate_pipeline(
        pipeline, task, part, fit_scaler, recipe.data.report_horizons(), progress=progress
    )
    return result
