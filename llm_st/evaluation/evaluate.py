"""Score a method on a whole split under the task's protocol, on one or several processes.

Every window whose targets lie in the split is scored exactly once (no dropped last
batch, no padding duplicates); metrics are masked (``docs/protocol.md``) and computed on
the original scale for the ST graph protocol or on the scaled values for the
long-term-series protocol, as ``task.metric_scale`` says.

Under a ``torch.distributed`` process group (``accelerate launch``, ``torchrun``)
each process scores a contiguous share of the windows and the per-horizon sums of
:class:`~llm_st.metrics.MetricAccumulator` are added across processes, so the
result equals the single-process one (up to float64 summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from llm_st.data.task import ForecastTask
from llm_st.data.windows import WindowDataset, pick_windows
from llm_st.errors import ConfigError, DataError
from llm_st.forecast import Forecast
from llm_st.metrics import MetricAccumulator, crps_from_samples

Batch = dict[str, torch.Tensor]


def process_group(distributed: bool | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group.

    ``distributed=None`` uses the process group when one with several processes is
    initialized; ``False`` ignores it (for code that runs on one process only).
    """
    if distributed is False:
        return 0, 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_share(num_items: int, rank: int, world_size: int) -> np.ndarray:
    """Indices of the contiguous share of ``num_items`` that process ``rank`` handles."""
    return np.array_split(np.arange(num_items), world_size)[rank]


def all_reduce_sum(values: np.ndarray, world_size: int) -> np.ndarray:
    """``values`` summed over all processes (float64); unchanged with one process."""
    if world_size == 1:
        return values
    dist = torch.distributed
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def iterate_batches(
    dataset: WindowDataset, batch_size: int, indices: np.ndarray | None = None
) -> Iterator[Batch]:
    """``indices`` (default: the whole dataset) in order, in batches (the last may be smaller)."""
    indices = np.arange(len(dataset)) if indices is None else indices
    for lo in range(0, len(indices), batch_size):
        yield dataset[indices[lo : lo + batch_size]]


class Scorer:
    """The one scorer: masked metrics of forecasts against a task's targets, on the
    scale the task's protocol scores on.

    Every path that scores a method goes through :meth:`update`: the engine's test and
    validation steps (forecasts on the scaled scale, :func:`evaluate`), forecasts of a
    trained or zero-shot model (:func:`score_forecast`). Forecasts and targets are put on
    the protocol's scale here and nowhere else: the original scale for the ST graph
    protocol, the scaler's normalized scale for the long-term-series protocol
    (``task.metric_scale``). Sums are float64 and can be added across processes.

    Parameters
    ----------
    task
        Supplies the scaler, the null value and the metric scale.
    horizons
        1-based horizon steps reported besides the average.

    Attributes
    ----------
    num_windows : int
        Windows scored so far.
    """

    def __init__(self, task: ForecastTask, horizons: Sequence[int] = (3, 6, 12)):
        self.task = task
        normalized = task.metric_scale == "normalized"
        # on the normalized scale a null value is no longer recognizable; the mask carries it
        self.metrics = MetricAccumulator(
            null_value=None if normalized else task.null_value, horizons=horizons
        )
        self.num_windows = 0
        self.crps_sum = 0.0
        self.crps_count = 0.0
        self.loss_sum = 0.0

    def _to_protocol(
        self,
        values: Any,
        scale: str,
        nodes: np.ndarray | None = None,
        channels: np.ndarray | None = None,
    ) -> Any:
        """``values`` (``[..., N, C]`` on ``scale``: "original" or "scaled") on the protocol's
        scale; ``nodes`` / ``channels`` index the scaler's statistics of a subset."""
        target = "scaled" if self.task.metric_scale == "normalized" else "original"
        if scale == target:
            return values
        scaler = self.task.scaler
        if nodes is not None or channels is not None:
            scaler = scaler.subset(nodes, channels)
        return scaler.transform(values) if target == "scaled" else scaler.inverse_transform(values)

    def update(
        self,
        pred: Any,
        target: Any,
        mask: Any,
        scale: str = "original",
        samples: Any = None,
        nodes: np.ndarray | None = None,
        channels: np.ndarray | None = None,
    ) -> None:
        """Add forecasts of ``W`` windows.

        Parameters
        ----------
        pred, target
            ``[W, H, N, C]`` forecast and truth (numpy or torch), both on ``scale``.
        mask
            ``[W, H, N, C]`` observed targets.
        scale
            ``"original"`` or ``"scaled"`` (the task's scaler applied).
        samples
            Optional ``[S, W, H, N, C]`` sample paths on ``scale`` (NaN where a sample is
            missing: the point forecast stands in); adds to the CRPS.
        nodes, channels
            Indices into the task's nodes / channels when the forecast covers a subset
            (the scaler's statistics are taken at these).
        """
        pred = self._to_protocol(pred, scale, nodes, channels)
        target = self._to_protocol(target, scale, nodes, channels)
        self.metrics.update(pred, target, mask)
        self.num_windows += len(pred)
        if samples is not None:
            samples = _numpy(self._to_protocol(samples, scale, nodes, channels))
            pred, target, mask = _numpy(pred), _numpy(target), _numpy(mask)
            samples = np.where(np.isnan(samples), pred[None], samples)
            valid = mask.astype(bool)
            if self.metrics.null_value is not None:
                valid = valid & ~np.isclose(target, self.metrics.null_value)
            count = float(valid.sum())
            if count:
                crps = crps_from_samples(samples, target, valid)
                self.crps_sum += float(crps) * count
                self.crps_count += count

    def update_scaled(self, pred_scaled: torch.Tensor, batch: Batch) -> None:
        """Add a batch forecast on the scaled scale against the batch's own targets
        (``y`` or ``y_scaled``, whichever is on the protocol's scale: no round trip)."""
        if self.task.metric_scale == "normalized":
            self.update(pred_scaled, batch["y_scaled"], batch["y_mask"], scale="scaled")
        else:
            pred = self.task.scaler.inverse_transform(pred_scaled)
            self.update(pred, batch["y"], batch["y_mask"])

    def merge_processes(self, world_size: int) -> None:
        """Add the sums of every process of the process group (no-op with one process)."""
        acc = self.metrics
        totals = acc.totals if acc.totals is not None else np.zeros((5, self.task.horizon))
        extra = [acc.nan_predictions, self.num_windows, self.loss_sum]
        extra += [self.crps_sum, self.crps_count]
        merged = all_reduce_sum(np.concatenate([totals.ravel(), extra]), world_size)
        acc.totals = merged[: totals.size].reshape(totals.shape)
        tail = merged[totals.size :]
        acc.nan_predictions, self.num_windows = int(tail[0]), int(tail[1])
        self.loss_sum, self.crps_sum, self.crps_count = (float(v) for v in tail[2:])

    def result(self) -> dict[str, Any]:
        """``{"metrics": {"h3": {mae, mse, rmse, mape}, ..., "avg": ...}, "num_windows",
        "metric_scale"}`` plus ``"crps"`` when samples were scored."""
        out: dict[str, Any] = {
            "metrics": self.metrics.compute(),
            "num_windows": self.num_windows,
            "metric_scale": self.task.metric_scale,
        }
        if self.crps_count:
            out["crps"] = self.crps_sum / self.crps_count
        return out


def _numpy(values: Any) -> np.ndarray:
    """``values`` as a numpy array; a tensor (on any device, in any dtype, bfloat16 too) as
    float64 on the CPU."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values)


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    return torch.device(device or next((p.device for p in model.parameters()), "cpu"))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: ForecastTask,
    part: str = "test",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    horizons: Sequence[int] = (3, 6, 12),
    history: int | None = None,
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    distributed: bool | None = None,
) -> dict[str, Any]:
    """Masked metrics of ``model`` on ``part`` of ``task`` (the :class:`Scorer`).

    Parameters
    ----------
    model
        ``model(batch) -> [B, H, N, C]`` forecast on the scaled scale, or a model that
        forecasts windows of data itself (``window_forecaster``, a fine-tuned LM that
        answers in text: :func:`evaluate_window_forecaster`).
    history
        A longer context for the model with the same targets.
    loss_fn
        Optional ``loss_fn(pred_scaled, batch) -> 0-d tensor``; its window-weighted
        mean over the split is returned as ``"loss"`` (from the same forward pass).
    distributed
        ``None``: split the windows over the processes of an initialized process
        group (every process must call this); ``False``: score everything here.

    Returns
    -------
    dict
        ``{"metrics": {"h3": {...}, ..., "avg": {...}}, "num_windows": int,
        "metric_scale": str}`` (plus ``"loss"`` with ``loss_fn``); each metric dict
        has ``mae, mse, rmse, mape``. ``num_windows`` counts the windows actually
        scored, summed over processes.
    """
    if getattr(model, "window_forecaster", False):
        if loss_fn is not None:
            raise ConfigError(
                f"{type(model).__name__} forecasts by decoding text; it has no forecast loss",
                "score its loss on its own data (the objective's validation loss)",
            )
        return evaluate_window_forecaster(model, task, part, horizons, history, distributed)
    device = _model_device(model, device)
    model.eval()
    rank, world = process_group(distributed)
    dataset = task.dataset(part, history)
    scorer = Scorer(task, horizons)
    for batch in iterate_batches(dataset, batch_size, process_share(len(dataset), rank, world)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        pred = model(batch).float()
        if loss_fn is not None:
            scorer.loss_sum += float(loss_fn(pred, batch)) * len(pred)
        scorer.update_scaled(pred, batch)
    scorer.merge_processes(world)
    out = scorer.result()
    if loss_fn is not None:
        out["loss"] = scorer.loss_sum / max(scorer.num_windows, 1)
    return out


def score_forecast(
    forecast: Forecast, task: ForecastTask, horizons: Sequence[int] = (3, 6, 12)
) -> dict[str, Any]:
    """Masked metrics of ``forecast`` (original scale) against the rows it forecasts.

    The targets are the rows ``forecast.target_start[w] + h`` of ``task.data`` at the
    forecast's nodes and channels (matched by id and name), scored by :class:`Scorer`.

    Returns
    -------
    dict
        The keys of :meth:`Scorer.result` (``crps`` from the samples, or equal to the MAE
        for a point forecast), plus ``valid_fraction`` and ``num_series``.
    """
    if forecast.target_start is None:
        raise ConfigError(
            "the forecast does not say which rows it forecasts",
            "forecast windows of the data with a pipeline's predict(..., at=...)",
        )
    data = task.data
    W, H, N, C = forecast.shape
    rows = forecast.target_start[:, None] + np.arange(H)
    if rows.max() >= data.num_steps or rows.min() < 0:
        raise DataError(
            f"the forecast reaches row {int(rows.max())} but the data have {data.num_steps}",
            "score forecasts of windows whose targets lie in the data",
        )
    position = {n: i for i, n in enumerate(data.node_ids)}
    missing = [n for n in forecast.node_ids if n not in position]
    if missing or any(c not in data.channels for c in forecast.channels):
        raise DataError(
            f"forecast nodes {missing[:3]} or channels {forecast.channels} are not in the data",
            "score a forecast against the data it was made for",
        )
    scorer = Scorer(task, horizons)
    _add_forecast(scorer, forecast)
    out = scorer.result()
    out.setdefault("crps", out["metrics"]["avg"]["mae"])
    out["valid_fraction"] = float(forecast.meta.get("valid_fraction", forecast.valid.mean()))
    out["num_series"] = W * N * C
    return out


def _add_forecast(scorer: Scorer, forecast: Forecast) -> None:
    """Score ``forecast`` (original scale) against the rows of ``scorer.task.data`` it
    forecasts (see :func:`score_forecast`)."""
    data = scorer.task.data
    W, H, N, C = forecast.shape
    rows = forecast.target_start[:, None] + np.arange(H)
    position = {n: i for i, n in enumerate(data.node_ids)}
    nodes = np.asarray([position[n] for n in forecast.node_ids])
    channels = np.asarray([data.channels.index(c) for c in forecast.channels])
    index = (rows[:, :, None, None], nodes[None, None, :, None], channels[None, None, None, :])
    target = data.values[index].astype(np.float64)
    point = forecast.point.astype(np.float64)
    samples = point[None] if forecast.samples is None else forecast.samples.astype(np.float64)
    subset = (
        (None, None)
        if len(nodes) == data.num_nodes and len(channels) == data.num_channels
        and np.array_equal(nodes, np.arange(data.num_nodes))
        and np.array_equal(channels, np.arange(data.num_channels))
        else (nodes, channels)
    )  # fmt: skip
    scorer.update(point, target, data.mask[index], samples=samples, nodes=subset[0],
                  channels=subset[1])  # fmt: skip


def evaluate_window_forecaster(
    model: Any,
    task: ForecastTask,
    part: str = "test",
    horizons: Sequence[int] = (3, 6, 12),
    history: int | None = None,
    distributed: bool | None = None,
    max_windows: int | None = None,
    max_nodes: int | None = None,
) -> dict[str, Any]:
    """Masked metrics of a model that forecasts windows of data itself (a fine-tuned LM).

    ``model.forecast_windows(data, starts, history, horizon, nodes)`` forecasts the windows
    of ``part``; without ``max_windows`` / ``max_nodes``, the subset ``model.subsets[part]``
    names (evenly spread windows and nodes; all when None) is forecast, so validation
    decodes the same fixed windows at every evaluation. Under a process group each process
    forecasts a contiguous share of the windows and the scorer's sums are added.

    Returns
    -------
    dict
        As :func:`evaluate`, plus ``valid_fraction`` (answers that parsed into
        ``horizon`` numbers) and ``num_nodes`` (nodes forecast).
    """
    windows_limit, nodes_limit = getattr(model, "subsets", {}).get(part, (None, None))
    windows_limit = max_windows if max_windows is not None else windows_limit
    nodes_limit = max_nodes if max_nodes is not None else nodes_limit
    rank, world = process_group(distributed)
    dataset = task.dataset(part, history)
    chosen = pick_windows(len(dataset), windows_limit)
    nodes = pick_windows(task.data.num_nodes, nodes_limit)
    share = chosen[process_share(len(chosen), rank, world)]
    scorer = Scorer(task, horizons)
    valid = np.zeros(2)
    if len(share):
        forecast = model.forecast_windows(
            task.data, dataset.index.starts[share], dataset.index.history, task.horizon, nodes
        )
        _add_forecast(scorer, forecast)
        valid += (float(forecast.meta.get("valid_fraction", 1.0)) * forecast.valid.size,
                  forecast.valid.size)  # fmt: skip
    scorer.merge_processes(world)
    valid = all_reduce_sum(valid, world)
    out = scorer.result()
    out["valid_fraction"] = float(valid[0] / max(valid[1], 1))
    out["num_nodes"] = len(nodes)
    return out


@torch.no_grad()
def mean_loss(
    loss_fn: Callable[[Batch], torch.Tensor],
    dataset: Any,
    batch_size: int,
    device: str | torch.device,
    distributed: bool | None = None,
    weight_fn: Callable[[Batch], torch.Tensor] | None = None,
) -> float:
    """Mean of ``loss_fn(batch)`` over ``dataset``, split over processes, each batch weighted
    by ``weight_fn(batch)`` (default: its number of windows)."""
    rank, world = process_group(distributed)
    total = np.zeros(2)
    for batch in iterate_batches(dataset, batch_size, process_share(len(dataset), rank, world)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        n = float(weight_fn(batch)) if weight_fn is not None else len(next(iter(batch.values())))
        total += (float(loss_fn(batch)) * n, n)
    total = all_reduce_sum(total, world)
    return float(total[0] / max(total[1], 1))
