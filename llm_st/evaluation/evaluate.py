"""Score a method on a whole split under the task's protocol, on one or several processes.

Every window whose targets lie in the split is scored exactly once (no dropped last
batch, no padding duplicates); metrics are masked (GUIDE section 5) and computed on
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
from llm_st.data.windows import WindowDataset
from llm_st.metrics import MetricAccumulator

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


def targets_for_metrics(
    task: ForecastTask, pred_scaled: torch.Tensor, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` on the scale the task's protocol scores on."""
    if task.metric_scale == "normalized":
        return pred_scaled, batch["y_scaled"].to(pred_scaled.device)
    return task.scaler.inverse_transform(pred_scaled), batch["y"].to(pred_scaled.device)


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
    """Masked metrics of ``model`` on ``part`` of ``task``.

    Parameters
    ----------
    model
        ``model(batch) -> [B, H, N, C]`` forecast on the scaled scale.
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
    device = _model_device(model, device)
    model.eval()
    rank, world = process_group(distributed)
    dataset = task.dataset(part, history)
    acc = MetricAccumulator(null_value=task.null_value, horizons=horizons)
    scored, loss_sum = 0, 0.0
    for batch in iterate_batches(dataset, batch_size, process_share(len(dataset), rank, world)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        pred = model(batch).float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(pred, batch)) * len(pred)
        acc.update(*targets_for_metrics(task, pred, batch), batch["y_mask"])
        scored += len(pred)
    totals = acc.totals if acc.totals is not None else np.zeros((5, task.horizon))
    merged = all_reduce_sum(
        np.concatenate([totals.ravel(), [acc.nan_predictions, scored, loss_sum]]), world
    )
    acc.totals = merged[: totals.size].reshape(totals.shape)
    acc.nan_predictions, scored, loss_sum = int(merged[-3]), int(merged[-2]), float(merged[-1])
    out: dict[str, Any] = {
        "metrics": acc.compute(),
        "num_windows": scored,
        "metric_scale": task.metric_scale,
    }
    if loss_fn is not None:
        out["loss"] = loss_sum / max(scored, 1)
    return out


@torch.no_grad()
def mean_loss(
    loss_fn: Callable[[Batch], torch.Tensor],
    dataset: WindowDataset,
    batch_size: int,
    device: str | torch.device,
    distributed: bool | None = None,
) -> float:
    """Window-weighted mean of ``loss_fn(batch)`` over ``dataset``, split over processes."""
    rank, world = process_group(distributed)
    total = np.zeros(2)
    for batch in iterate_batches(dataset, batch_size, process_share(len(dataset), rank, world)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        n = len(batch["x"])
        total += (float(loss_fn(batch)) * n, n)
    total = all_reduce_sum(total, world)
    return float(total[0] / max(total[1], 1))
