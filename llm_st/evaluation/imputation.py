"""Imputation: hide observed entries of a split's windows, rebuild them, score the hidden ones.

The protocol of the GPT4TS imputation table (Zhou et al., "One Fits All", NeurIPS 2023:
random points of every test window hidden at a mask rate of 12.5 / 25 / 37.5 / 50 %,
MAE and MSE on the hidden points only), with a second mask kind for sensor networks:

- **windows**: consecutive, non-overlapping windows of ``length`` rows tiling a split's
  rows (:func:`tile_windows`), so every entry of the split is hidden at most once;
- **masks** (``[W, length, N, C]`` bool, True = hidden), drawn from a seeded generator and
  never covering an entry that is missing in the data:
  :func:`random_mask` hides every observed entry with probability ``rate``;
  :func:`block_mask` hides, in every window, a random subset of the sensors for one
  contiguous stretch of rows (a sensor outage);
- **imputers** see a window only through its visible entries (:func:`visible_batch`:
  ``x`` scaled and 0 where not visible, ``x_mask`` the visible entries, ``x_time``) and
  return every entry on the scaled scale: :class:`LinearInterpolation`,
  :class:`ProfileImputer` (historical average), :class:`ReconstructionImputer` (a
  model trained with the masked-modelling objective);
- **scores** (:func:`score_imputation`, :func:`evaluate_imputation`): MAE and MSE over the
  hidden entries only, on the task's metric scale (original for the ST graph protocol).
  Entries that are visible, or missing in the data, never count; a NaN imputation of a
  hidden entry makes the score NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llm_st.data.task import ForecastTask
from llm_st.data.timefeatures import time_features
from llm_st.errors import ConfigError, DataError

Imputer = Callable[[dict[str, torch.Tensor]], Any]
"""``imputer(batch) -> [B, W, N, C]`` every entry on the scaled scale (array or tensor)."""


# ------------------------------------------------------------------ windows and masks
def tile_windows(rows: tuple[int, int], length: int) -> np.ndarray:
    """Start rows of the consecutive windows of ``length`` rows inside ``[start, stop)``."""
    start, stop = rows
    if length < 1 or stop - start < length:
        raise DataError(
            f"rows [{start}, {stop}) hold no window of {length} rows",
            "use a shorter window or a larger split",
        )
    return np.arange(start, stop - length + 1, length, dtype=np.int64)


def random_mask(observed: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Hide every observed entry independently with probability ``rate`` (bool, shape of
    ``observed``; missing entries are never hidden)."""
    if not 0 < rate < 1:
        raise ConfigError(f"mask rate {rate} is not in (0, 1)", "use e.g. 0.125, 0.25")
    observed = np.asarray(observed, bool)
    return (rng.random(observed.shape) < rate) & observed


def block_mask(
    observed: np.ndarray,
    node_fraction: float,
    block_length: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per window (axis 0 of ``observed`` ``[W, length, N, C]``), hide
    ``max(1, round(node_fraction * N))`` sensors drawn without replacement for
    ``block_length`` consecutive rows at a uniform offset (observed entries only)."""
    observed = np.asarray(observed, bool)
    W, length, N = observed.shape[:3]
    if not 0 < node_fraction <= 1:
        raise ConfigError(f"block_nodes={node_fraction} is not in (0, 1]", "use e.g. 0.25")
    if not 1 <= block_length <= length:
        raise ConfigError(
            f"block_length={block_length} is not within 1..{length} (the window)",
            "use a stretch no longer than the window",
        )
    k = max(1, round(node_fraction * N))
    hidden = np.zeros_like(observed)
    for w in range(W):
        nodes = rng.choice(N, size=k, replace=False)
        offset = int(rng.integers(0, length - block_length + 1))
        hidden[w, offset : offset + block_length, nodes] = True
    return hidden & observed


def window_rows(starts: np.ndarray, length: int) -> np.ndarray:
    """``[W, length]`` rows of the windows starting at ``starts``."""
    return np.asarray(starts, np.int64)[:, None] + np.arange(length)


def visible_batch(
    task: ForecastTask, rows: np.ndarray, hidden: np.ndarray, times: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """What an imputer sees of the windows ``rows`` ``[B, length]``: ``x`` (scaled, 0 where
    not visible), ``x_mask`` (observed and not hidden), ``x_time`` and ``start``. The
    hidden entries' values are not in it."""
    data = task.data
    visible = data.mask[rows] & ~hidden
    x = task.scaler.transform(data.values[rows])
    x = np.where(visible, x, 0.0).astype(np.float32)
    times = time_features(data) if times is None else times
    return {
        "x": torch.from_numpy(x),
        "x_mask": torch.from_numpy(visible),
        "x_time": torch.from_numpy(np.ascontiguousarray(times[rows])),
        "start": torch.from_numpy(rows[:, 0].copy()),
    }


# ------------------------------------------------------------------ imputers
def training_means(task: ForecastTask) -> np.ndarray:
    """``[N, C]`` mean of the observed training entries of every series, scaled (0 for a
    series never observed in training)."""
    train = task.train_data()
    values = task.scaler.transform(train.values).astype(np.float64)
    mask = train.mask
    return np.where(mask, values, 0.0).sum(0) / np.maximum(mask.sum(0), 1)


class LinearInterpolation:
    """Linear interpolation along time of every series of a window from its visible
    entries (``numpy.interp``: constant before the first and after the last one). A series
    with no visible entry in the window gets ``fallback`` (``[N, C]``, e.g. its training
    mean, :func:`training_means`)."""

    def __init__(self, fallback: np.ndarray):
        self.fallback = np.asarray(fallback, np.float64)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        x = batch["x"].numpy().astype(np.float64)
        visible = batch["x_mask"].numpy()
        B, L, N, C = x.shape
        out = np.empty_like(x)
        steps = np.arange(L)
        for b in range(B):
            for n in range(N):
                for c in range(C):
                    seen = visible[b, :, n, c]
                    if seen.any():
                        out[b, :, n, c] = np.interp(steps, steps[seen], x[b, seen, n, c])
                    else:
                        out[b, :, n, c] = self.fallback[n, c]
        return out


class ProfileImputer:
    """The historical average: every entry from the profile of the training rows at its
    slot of the week (or day), whatever is visible. ``model`` is a fitted
    :class:`~llm_st.models.naive.HistoricalAverage`: it maps ``y_time`` to its table."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(iter(self.model.buffers())).device
        return self.model({"y_time": batch["x_time"].to(device)}).float().cpu()


class ReconstructionImputer:
    """A model trained with the masked-modelling objective (``"patchtst"`` style): every
    entry rebuilt from the visible ones by
    :meth:`~llm_st.objectives.masked.MaskedModelling.reconstruct`."""

    def __init__(self, model: torch.nn.Module, objective: Any, device: str | torch.device):
        self.model, self.objective, self.device = model, objective, torch.device(device)
        self.model.to(self.device).eval()
        self.objective.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {k: v.to(self.device) for k, v in batch.items()}
        return self.objective.reconstruct(self.model, moved).float().cpu()


# ------------------------------------------------------------------ scoring
def score_imputation(pred: Any, truth: Any, hidden: Any) -> dict[str, float]:
    """``{"mae", "mse", "count"}`` over the ``hidden`` entries only (``count`` of them);
    NaN scores when nothing is hidden or an imputation of a hidden entry is NaN."""
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    hidden = np.asarray(hidden, bool)
    if not pred.shape == truth.shape == hidden.shape:
        raise DataError(
            f"imputation {pred.shape}, truth {truth.shape} and mask {hidden.shape} differ",
            "pass arrays of one shape",
        )
    err = (pred - truth)[hidden]
    count = int(hidden.sum())
    if count == 0:
        return {"mae": float("nan"), "mse": float("nan"), "count": 0}
    return {"mae": float(np.abs(err).mean()), "mse": float((err**2).mean()), "count": count}


def evaluate_imputation(
    imputer: Imputer,
    task: ForecastTask,
    starts: np.ndarray,
    length: int,
    hidden: np.ndarray,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Impute the windows of ``length`` rows at ``starts`` with ``hidden`` (``[W, length,
    N, C]``) hidden, and score the hidden entries on the task's metric scale.

    Returns
    -------
    dict
        ``metrics`` (``{"avg": {"mae", "mse"}}``, the runner's ``test`` block), and
        ``num_windows``, ``num_hidden``, ``num_observed`` (observed entries of the
        windows), ``hidden_fraction`` (of the observed entries), ``metric_scale``.
    """
    data, scaler = task.data, task.scaler
    hidden = np.asarray(hidden, bool)
    rows = window_rows(starts, length)
    if hidden.shape != rows.shape + data.values.shape[1:]:
        raise DataError(
            f"mask of shape {hidden.shape} for {len(rows)} windows of {length} rows",
            "draw the mask for these windows",
        )
    if (hidden & ~data.mask[rows]).any():
        raise DataError("the mask hides entries that are missing in the data", "hide observed ones")
    times = time_features(data)
    abs_sum = sq_sum = 0.0
    nan = False
    for lo in range(0, len(rows), batch_size):
        r, h = rows[lo : lo + batch_size], hidden[lo : lo + batch_size]
        pred = imputer(visible_batch(task, r, h, times))
        pred = pred.numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        pred = pred.astype(np.float64)
        truth = data.values[r].astype(np.float64)
        if task.metric_scale == "normalized":
            truth = scaler.transform(truth)
        else:
            pred = scaler.inverse_transform(pred)
        err = (pred - truth)[h]
        nan |= bool(np.isnan(err).any())
        abs_sum += float(np.abs(err).sum())
        sq_sum += float((err**2).sum())
    count = int(hidden.sum())
    observed = int(data.mask[rows].sum())
    mae = float("nan") if nan or not count else abs_sum / count
    mse = float("nan") if nan or not count else sq_sum / count
    return {
        "metrics": {"avg": {"mae": mae, "mse": mse}},
        "num_windows": len(rows),
        "num_hidden": count,
        "num_observed": observed,
        "hidden_fraction": count / max(observed, 1),
        "metric_scale": task.metric_scale,
    }
