"""Anomaly detection scored against known anomalies: forecast or reconstruction errors of
window-sensors, thresholded, against labels from the data generator.

The unit is a **window-sensor**: one forecasting window of a split (targets in the
split's rows, every start row, as the forecasting protocol) at one sensor. It is
**anomalous** when an anomaly (for ``synthetic-traffic``, an incident of the generator:
:func:`llm_st.data.synthetic.incident_labels`) lies at that sensor in one of the window's
target rows (:func:`window_labels`). Its **score** (higher = more anomalous), on the
scaled scale (the task's scaler):

- :func:`forecast_error_scores`: the mean absolute error of a forecast of the target rows
  over their observed entries;
- :func:`reconstruction_errors` and :func:`window_scores`: the mean absolute error of a
  masked reconstruction of the target rows, every row hidden once with the rows of its
  block (a quarter of the history) and rebuilt from the ``history`` rows around it.

Window-sensors without an observed target are left out (score NaN). The **threshold**
(:func:`choose_threshold`) is the one with the best F1 on the validation split, applied
to the test split unchanged; when the validation split has no anomaly, the ``(1 - r)``
quantile of the validation scores with ``r`` the anomaly rate of the training split.
:func:`detection_metrics` gives precision, recall and F1 at it and the threshold-free ROC
AUC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llm_st.data.task import ForecastTask
from llm_st.data.timefeatures import time_features
from llm_st.data.windows import WindowDataset
from llm_st.errors import ConfigError
from llm_st.evaluation.evaluate import iterate_batches
from llm_st.metrics import best_f1_threshold, precision_recall_f1, roc_auc

Batch = dict[str, torch.Tensor]


def window_labels(
    row_labels: np.ndarray, starts: np.ndarray, history: int, horizon: int
) -> np.ndarray:
    """``[W, N]`` bool: window ``w`` (history rows from ``starts[w]``) is anomalous at
    sensor ``n`` when ``row_labels`` ``[T, N]`` is True in one of its target rows
    ``starts[w] + history .. + horizon - 1``."""
    rows = np.asarray(starts, np.int64)[:, None] + history + np.arange(horizon)
    return np.asarray(row_labels, bool)[rows].any(axis=1)


def _per_sensor_mean(err: torch.Tensor, counted: torch.Tensor) -> np.ndarray:
    """``[B, N]`` mean of ``err`` ``[B, T, N, C]`` over time and channels where ``counted``;
    NaN where nothing counts."""
    total = torch.where(counted, err, torch.zeros_like(err)).sum(dim=(1, 3)).double()
    count = counted.sum(dim=(1, 3)).double()
    out = total / count.clamp(min=1)
    return torch.where(count > 0, out, torch.full_like(out, float("nan"))).cpu().numpy()


@torch.no_grad()
def forecast_error_scores(
    forecast: Callable[[Batch], torch.Tensor],
    dataset: WindowDataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``[W, N]`` mean absolute error of ``forecast(batch)`` (``[B, H, N, C]`` scaled)
    against the observed targets of every window of ``dataset``, per sensor."""
    out = []
    for batch in iterate_batches(dataset, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        pred = forecast(batch).float()
        err = (pred - batch["y_scaled"].float()).abs()
        out.append(_per_sensor_mean(err, batch["y_mask"].bool()))
    return np.concatenate(out) if out else np.zeros((0, dataset.data.num_nodes))


@torch.no_grad()
def reconstruction_errors(
    reconstruct: Callable[[Batch], torch.Tensor],
    task: ForecastTask,
    rows: tuple[int, int],
    block: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``[stop - start, N]`` absolute error of the masked reconstruction of every row
    ``start .. stop - 1`` of ``rows`` at every sensor (mean over channels; NaN where not
    observed).

    The rows are cut into consecutive blocks of ``block`` rows (default a quarter of the
    history, at least 1); each block is hidden in a window of ``history`` rows around it
    (the block in the middle, the window moved inside the series at its ends) and
    ``reconstruct(batch) -> [B, history, N, C]`` (scaled) rebuilds it from the window's
    other observed rows.
    """
    L, data = task.history, task.data
    T, N = data.num_steps, data.num_nodes
    start, stop = rows
    b = max(1, L // 4) if block is None else int(block)
    if not 1 <= b < L:
        raise ConfigError(
            f"a block of {b} rows leaves nothing visible in a window of {L}",
            "use a block shorter than the history",
        )
    blocks = np.arange(start, stop, b, dtype=np.int64)
    first = np.clip(blocks - (L - b) // 2, 0, T - L)  # the window of every block
    offset = blocks - first
    times = time_features(data)
    steps = np.arange(L)
    out = np.full((stop - start, N), np.nan)
    for lo in range(0, len(blocks), batch_size):
        win = first[lo : lo + batch_size, None] + steps  # [B, L]
        off = offset[lo : lo + batch_size, None]
        hide = (steps >= off) & (steps < off + b) & (win < stop)  # [B, L]
        observed = data.mask[win]
        visible = observed & ~hide[:, :, None, None]
        scaled = task.scaler.transform(data.values[win]).astype(np.float32)
        batch = {
            "x": torch.from_numpy(np.where(visible, scaled, 0.0)).to(device),
            "x_mask": torch.from_numpy(visible).to(device),
            "x_time": torch.from_numpy(np.ascontiguousarray(times[win])).to(device),
        }
        recon = reconstruct(batch).float().cpu().numpy()
        counted = observed & hide[:, :, None, None]
        err = np.where(counted, np.abs(recon - scaled), 0.0).sum(-1)  # [B, L, N]
        count = counted.sum(-1)
        per_row = np.where(count > 0, err / np.maximum(count, 1), np.nan)
        at = np.nonzero(hide)  # (window, step) of every hidden row
        out[win[at] - start] = per_row[at]
    return out


def window_scores(
    row_scores: np.ndarray, first_row: int, starts: np.ndarray, history: int, horizon: int
) -> np.ndarray:
    """``[W, N]`` mean over the target rows of every window (history rows from
    ``starts``) of ``row_scores`` ``[rows, N]`` (whose row 0 is ``first_row``), NaN
    entries left out (NaN where all are)."""
    rows = np.asarray(starts, np.int64)[:, None] + history + np.arange(horizon) - first_row
    picked = row_scores[rows]  # [W, H, N]
    count = (~np.isnan(picked)).sum(1)
    total = np.nansum(picked, axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def choose_threshold(
    val_scores: np.ndarray, val_labels: np.ndarray, train_rate: float
) -> dict[str, Any]:
    """The threshold of the test split, from the validation split only.

    ``{"threshold", "source", "val_f1"}``: the threshold with the best validation F1
    (``source: "val_best_f1"``); when the validation split has no anomaly (among scored
    window-sensors), the ``(1 - train_rate)`` quantile of the validation scores
    (``"train_rate_quantile"``; no item flagged when ``train_rate`` is 0).
    """
    scores = np.asarray(val_scores, np.float64)
    labels = np.asarray(val_labels, bool)
    scored = ~np.isnan(scores)
    if labels[scored].any():
        threshold, f1 = best_f1_threshold(scores, labels)
        return {"threshold": threshold, "source": "val_best_f1", "val_f1": f1}
    if train_rate <= 0 or not scored.any():
        return {"threshold": float("inf"), "source": "train_rate_quantile", "val_f1": None}
    threshold = float(np.quantile(scores[scored], 1.0 - train_rate))
    return {"threshold": threshold, "source": "train_rate_quantile", "val_f1": None}


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """``{"precision", "recall", "f1", "auc"}`` of the scored items (NaN scores left out):
    flagged where ``score >= threshold``; AUC from the scores alone."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    scored = ~np.isnan(scores)
    flagged = scores[scored] >= threshold
    return {**precision_recall_f1(flagged, labels[scored]), "auc": roc_auc(scores, labels)}
