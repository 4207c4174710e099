"""The language-model figures: the LM pre-trained here on held-out data, and fine-tuning it.

:func:`heldout_rows` scores ``st-lm`` (``llm-st pretrain``) zero-shot on a real dataset it
never saw, beside last value, the historical average and a trained STID, all on the same
test windows and sensors. :func:`finetune_rows` fine-tunes it with LoRA and with QLoRA
(``llm-st finetune``, each in its own process, so that peak memory is the run's own) and
scores zero-shot and both fine-tuned models on the same windows and sensors.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_st.config import load_recipe
from llm_st.data import load
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.data.windows import pick_windows
from llm_st.engine import build_task, train
from llm_st.evaluation.evaluate import evaluate_window_forecaster, score_forecast
from llm_st.forecast import Forecast
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.pipeline import ForecastPipeline, evaluate_pipeline


def node_subset(task: ForecastTask, max_nodes: int | None) -> ForecastTask:
    """``task`` restricted to at most ``max_nodes`` evenly spread nodes (their scaler too)."""
    nodes = pick_windows(task.data.num_nodes, max_nodes)
    return dataclasses.replace(
        task, data=task.data.select_nodes(nodes), scaler=task.scaler.subset(nodes)
    )


def _select_nodes(forecast: Forecast, node_ids: Sequence[str]) -> Forecast:
    """The forecast of the nodes ``node_ids`` only."""
    index = [list(forecast.node_ids).index(n) for n in node_ids]
    return Forecast(
        point=forecast.point[:, :, index],
        point_name=forecast.point_name,
        target_times=forecast.target_times,
        cutoffs=forecast.cutoffs,
        node_ids=list(node_ids),
        channels=list(forecast.channels),
        target_start=forecast.target_start,
        meta=forecast.meta,
    )


def heldout_rows(
    model_dir: str | Path,
    spec: str = "LosLoop",
    history: int = 48,
    horizon: int = 12,
    max_windows: int = 32,
    max_nodes: int = 16,
    stid_recipe: str | Path | None = None,
    stid_overrides: Sequence[str] = (),
    out: str | Path = "runs/bench-lm",
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """The LM in ``model_dir`` zero-shot (greedy) on ``spec``'s test split, beside last
    value, the historical average and STID trained on ``spec`` with its recipe, on the same
    ``max_windows`` evenly spread test windows of ``max_nodes`` evenly spread sensors.

    The LM and the baselines read ``history`` steps; STID reads its recipe's history
    ending at the same cut-off (the same targets). Returns one row per method: ``method``,
    ``metrics``, ``valid_fraction``, ``seconds``, ``num_windows``, ``num_series``.
    """
    task = node_subset(prepare_task(load(spec), history, horizon), max_nodes)
    horizons = tuple(sorted({h for h in (3, 6, 12) if h <= horizon} | {horizon}))
    rows = []
    began = time.perf_counter()
    lm = ForecastPipeline.from_pretrained(
        str(model_dir), history, horizon, device=device, num_samples=1, temperature=0.0
    )
    result, forecast = evaluate_pipeline(
        lm, task, "test", horizons=horizons, max_windows=max_windows, progress=False
    )
    rows.append({**result, "method": "st-lm zero-shot", "seconds": time.perf_counter() - began})
    cutoffs = forecast.target_start - 1
    for name in ("last_value", "historical_average"):
        began = time.perf_counter()
        base = ForecastPipeline.from_method(name, history, horizon, device="cpu")
        result, _ = evaluate_pipeline(
            base, task, "test", horizons=horizons, max_windows=max_windows, progress=False
        )
        rows.append({**result, "method": name, "seconds": time.perf_counter() - began})
    if stid_recipe is not None:
        began = time.perf_counter()
        recipe = load_recipe(stid_recipe, [f"data.spec={spec}", *stid_overrides])
        run = Path(out) / "stid"
        metrics = train(recipe, run, overwrite=True)
        stid = ForecastPipeline.from_run(run, device=device)
        full = stid.predict(load(spec), at=cutoffs, progress=False)
        result = score_forecast(_select_nodes(full, task.data.node_ids), task, horizons)
        rows.append(
            {
                **result,
                "method": f"stid (trained, {metrics['steps']} steps)",
                "seconds": time.perf_counter() - began,
            }
        )
    return rows


def _finetune_process(recipe: str | Path, out: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """``llm-st finetune`` in a process of its own; its ``metrics.json``."""
    cmd = [sys.executable, "-m", "llm_st.cli", "finetune", "--recipe", str(recipe),
           "--out", str(out), "--overwrite"]  # fmt: skip
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llm-st finetune failed: {done.stderr.strip()[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def finetune_rows(
    model_dir: str | Path,
    recipes: dict[str, str | Path],
    out: str | Path = "runs/bench-lm",
    overrides: Sequence[str] = (),
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Zero-shot, then each recipe of ``recipes`` (``{label: fine-tuning recipe}``, e.g.
    LoRA and QLoRA) fine-tuned from ``model_dir``; all scored on the test windows and nodes
    the recipes' ``test_windows`` / ``test_nodes`` pick (the first recipe's data and subset).

    Returns one row per model: ``method``, ``metrics``, ``valid_fraction``, and for the
    fine-tuned ones ``train_time_s``, ``trainable``, ``run_bytes``, ``peak_rss_mb``.
    """
    out = Path(out)
    sets = [f"model.backbone.source={model_dir}", f"training.device={device}", *overrides]
    first = load_recipe(next(iter(recipes.values())), sets)
    task = build_task(first.data)
    params = first.model.params
    subset = {"max_windows": params.get("test_windows"), "max_nodes": params.get("test_nodes")}
    horizons = first.data.report_horizons()
    began = time.perf_counter()
    zero = build_model(
        "text_lm",
        DataInfo.from_data(task.data, task.history, task.horizon),
        backbone={"source": str(model_dir), "freeze": "frozen"},
        **params,
    )
    result = evaluate_window_forecaster(zero, task, "test", horizons, **subset)
    rows = [{**result, "method": "zero-shot", "seconds": time.perf_counter() - began,
             "trainable": 0, "run_bytes": 0}]  # fmt: skip
    for label, recipe in recipes.items():
        metrics = _finetune_process(recipe, out / label, sets)
        model = ForecastPipeline.from_run(out / label, device=device).model
        result = evaluate_window_forecaster(model, task, "test", horizons, **subset)
        rows.append(
            {
                **result,
                "method": label,
                "train_time_s": metrics["train_time_s"],
                "steps": metrics["steps"],
                "trainable": metrics["params"]["trainable"],
                "total": metrics["params"]["total"],
                "run_bytes": metrics["run_bytes"],
                "peak_rss_mb": metrics["peak_rss_mb"],
                "peak_cuda_mb": metrics.get("peak_cuda_mb"),
            }
        )
    return rows


def lm_table(rows: list[dict[str, Any]]) -> str:
    """A text table of :func:`heldout_rows` or :func:`finetune_rows` rows."""
    from llm_st.bench.report import text_table

    head = ["method", "avg MAE", "avg RMSE", "h12 MAE", "valid", "train s", "trainable",
            "on disk", "peak RSS"]  # fmt: skip
    body = []
    for r in rows:
        avg = r["metrics"]["avg"]
        last = r["metrics"].get("h12", {}).get("mae", np.nan)
        body.append(
            [
                r["method"],
                f"{avg['mae']:.4f}",
                f"{avg['rmse']:.4f}",
                f"{last:.4f}",
                f"{r.get('valid_fraction', 1.0):.1%}",
                f"{r['train_time_s']:.0f}" if "train_time_s" in r else "-",
                f"{r['trainable']:,}" if r.get("trainable") is not None else "-",
                f"{r['run_bytes'] / 1024:.0f} KiB" if r.get("run_bytes") else "-",
                f"{r['peak_rss_mb']:.0f} MiB" if r.get("peak_rss_mb") else "-",
            ]
        )
    return text_table(head, body)
