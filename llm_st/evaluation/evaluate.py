"""Score a method on a whole split under the task's protocol.

Every window whose targets lie in the split is scored (no dropped last batch);
metrics are masked (GUIDE section 5) and computed on the original scale for
the ST graph protocol or on the scaled values for the long-term-series protocol,
as ``task.metric_scale`` says.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from llm_st.data.task import ForecastTask
from llm_st.data.windows import WindowDataset
from llm_st.metrics import MetricAccumulator


def iterate_batches(dataset: WindowDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """The whole dataset in order, in batches (the last one may be smaller)."""
    for lo in range(0, len(dataset), batch_size):
        yield dataset[np.arange(lo, min(lo + batch_size, len(dataset)))]


def targets_for_metrics(task: ForecastTask, pred_scaled: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` on the scale the task's protocol scores on."""
    if task.metric_scale == "normalized":
        return pred_scaled, batch["y_scaled"].to(pred_scaled.device)
    return task.scaler.inverse_transform(pred_scaled), batch["y"].to(pred_scaled.device)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: ForecastTask,
    part: str = "test",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    horizons: Sequence[int] = (3, 6, 12),
    history: int | None = None,
) -> dict[str, Any]:
    """Masked metrics of ``model`` on ``part`` of ``task``.

    Returns ``{"metrics": {"h3": {...}, ..., "avg": {...}}, "num_windows": int,
    "metric_scale": str}`` where each metric dict has ``mae, mse, rmse, mape``.
    ``history`` gives the model a longer context with the same targets.
    """
    device = torch.device(device or next((p.device for p in model.parameters()), "cpu"))
    model.eval()
    dataset = task.dataset(part, history)
    acc = MetricAccumulator(null_value=task.null_value, horizons=horizons)
    for batch in iterate_batches(dataset, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        pred = model(batch).float()
        pred, target = targets_for_metrics(task, pred, batch)
        acc.update(pred, target, batch["y_mask"])
    return {"metrics": acc.compute(), "num_windows": len(dataset), "metric_scale": task.metric_scale}
